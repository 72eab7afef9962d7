"""Checks over manifests rendered from the postmesh chart (`helm template`).

    python3 k8s/tests/test_rendered.py RENDERED.yaml[=COMPONENTS] ... [unittest options]

Each argument is a file holding one rendering; COMPONENTS (comma-separated)
names the components that rendering must run, by default all eight. For
every component the file runs, the tests assert what Kubernetes needs to
run it well: gRPC probes on the gRPC port with the `readiness`/`liveness`
health names (HTTP probes for the gateway), requests and limits, a
hardened securityContext, Services that select exactly its pods, the
headless Service its callers are pointed at, a NetworkPolicy, and a
termination grace that covers the server's drain. Only the standard
library and PyYAML are needed.
"""

import functools
import re
import sys
import unittest

import yaml

ALL_COMPONENTS = ["user", "content", "social", "analytics", "ai", "notification", "webhook", "gateway"]
SECRET_VARIABLES = {
    "POSTMESH_DATABASE_URL",
    "POSTMESH_REDIS_URL",
    "POSTMESH_NATS_URL",
    "POSTMESH_AUTH_SERVICE_SECRET",
    "POSTMESH_ENCRYPTION_KEYS",
}

# Set from the command line before unittest runs: [(path, [components])].
RENDERINGS = []


def parse_quantity(value):
    """A Kubernetes quantity as a float (CPU in cores, memory in bytes)."""
    text = str(value)
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = float(match.group(1)), match.group(2)
    factors = {
        "": 1, "m": 1e-3, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    }
    if suffix not in factors:
        raise ValueError(f"unknown quantity suffix in {text!r}")
    return number * factors[suffix]


def parse_duration_seconds(text):
    match = re.fullmatch(r"([0-9]+)(ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    number, unit = int(match.group(1)), match.group(2)
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def selects(selector, labels):
    """Whether a matchLabels-style selector (a dict) selects `labels`."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@functools.lru_cache(maxsize=None)
def load(path):
    return Rendering(path)


class Rendering:
    """One `helm template` output, indexed."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.docs = [d for d in yaml.safe_load_all(f) if d]
        self.path = path

    def of_kind(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def named(self, kind, name):
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        return found[0] if found else None

    def component_deployments(self):
        """component -> Deployment, for Deployments running `postmesh serve`."""
        out = {}
        for d in self.of_kind("Deployment"):
            container = d["spec"]["template"]["spec"]["containers"][0]
            args = container.get("args") or []
            if len(args) >= 2 and args[0] == "serve":
                out[args[1]] = d
        return out

    def config(self):
        maps = self.of_kind("ConfigMap")
        assert len(maps) == 1, f"{self.path}: expected one ConfigMap, found {len(maps)}"
        return maps[0]["data"]


def container_of(deployment):
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one container expected"
    return containers[0]


def port_number(container, port):
    """A probe's or Service's port (name or number) as a container port number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


class RenderedChartTest(unittest.TestCase):
    """Every check runs over every rendering and every component in it."""

    def each(self):
        """(rendering, component, deployment) for every expected component
        found (test_expected_components_and_nothing_else reports the missing)."""
        self.assertTrue(RENDERINGS, "no rendered manifests given")
        out = []
        for path, expected in RENDERINGS:
            rendering = load(path)
            deployments = rendering.component_deployments()
            out.extend((rendering, c, deployments[c]) for c in expected if c in deployments)
        return out

    def test_expected_components_and_nothing_else(self):
        for path, expected in RENDERINGS:
            with self.subTest(file=path):
                served = set(load(path).component_deployments())
                self.assertEqual(served, set(expected))

    def test_probes(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                container = container_of(deployment)
                probes = {kind: container.get(kind) for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
                for kind, probe in probes.items():
                    self.assertIsNotNone(probe, f"{kind} missing")
                if component == "gateway":
                    # The gateway has no gRPC listener: HTTP health, on its
                    # admin port (the same health as its HTTP port serves).
                    http_port = port_number(container, "http")
                    listen = rendering.config()["POSTMESH_HTTP_LISTEN"]
                    self.assertEqual(int(listen.rsplit(":", 1)[1]), http_port)
                    admin_port = port_number(container, "admin")
                    expected_paths = {"startupProbe": "/health/live", "readinessProbe": "/health/ready",
                                      "livenessProbe": "/health/live"}
                    for kind, probe in probes.items():
                        self.assertIn("httpGet", probe, f"{kind} of the gateway is not HTTP")
                        self.assertIn(port_number(container, probe["httpGet"]["port"]), (http_port, admin_port),
                                      f"{kind} probes a port the gateway does not serve health on")
                        self.assertEqual(probe["httpGet"]["path"], expected_paths[kind], kind)
                    names = [p["name"] for p in container["ports"]]
                    self.assertNotIn("grpc", names, "the gateway serves no gRPC")
                else:
                    grpc_port = port_number(container, "grpc")
                    listen = rendering.config()["POSTMESH_LISTEN"]
                    self.assertEqual(int(listen.rsplit(":", 1)[1]), grpc_port,
                                     "POSTMESH_LISTEN and the container's grpc port differ")
                    expected_names = {"startupProbe": "liveness", "readinessProbe": "readiness",
                                      "livenessProbe": "liveness"}
                    for kind, probe in probes.items():
                        self.assertIn("grpc", probe, f"{kind} is not a native gRPC probe")
                        self.assertEqual(probe["grpc"]["port"], grpc_port, f"{kind} probes another port")
                        self.assertEqual(probe["grpc"].get("service"), expected_names[kind], kind)
                for kind, probe in probes.items():
                    self.assertGreaterEqual(probe.get("timeoutSeconds", 1), 1, kind)
                # Liveness never follows readiness: a backend outage must not restart pods.
                self.assertNotEqual(probes["livenessProbe"], probes["readinessProbe"])

    def test_resources(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                resources = container_of(deployment).get("resources") or {}
                for bound in ("requests", "limits"):
                    for resource in ("cpu", "memory"):
                        self.assertIsNotNone((resources.get(bound) or {}).get(resource), f"{bound}.{resource} not set")
                for resource in ("cpu", "memory"):
                    self.assertLessEqual(parse_quantity(resources["requests"][resource]),
                                         parse_quantity(resources["limits"][resource]),
                                         f"{resource} request above its limit")

    def test_security_context(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                self.assert_hardened(deployment["spec"]["template"]["spec"])

    def test_every_pod_is_hardened(self):
        # Demo backends and the migration Job included.
        for path, _ in RENDERINGS:
            rendering = load(path)
            for workload in rendering.of_kind("Deployment") + rendering.of_kind("Job"):
                with self.subTest(file=path, workload=workload["metadata"]["name"]):
                    self.assert_hardened(workload["spec"]["template"]["spec"])

    def assert_hardened(self, pod):
        pod_context = pod.get("securityContext") or {}
        self.assertIs(pod_context.get("runAsNonRoot"), True, "runAsNonRoot")
        self.assertNotEqual(pod_context.get("runAsUser"), 0, "runs as root")
        self.assertEqual((pod_context.get("seccompProfile") or {}).get("type"), "RuntimeDefault")
        self.assertIs(pod.get("automountServiceAccountToken"), False, "service account token mounted")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            self.assertFalse(pod.get(flag, False), flag)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container.get("securityContext") or {}
            self.assertIs(context.get("allowPrivilegeEscalation"), False, "allowPrivilegeEscalation")
            self.assertIs(context.get("readOnlyRootFilesystem"), True, "readOnlyRootFilesystem")
            self.assertFalse(context.get("privileged", False), "privileged")
            self.assertIn("ALL", (context.get("capabilities") or {}).get("drop", []), "capabilities not dropped")
            self.assertFalse((context.get("capabilities") or {}).get("add"), "capabilities added")
            for mount in container.get("volumeMounts", []):
                volume = volumes.get(mount["name"])
                self.assertIsNotNone(volume, f"mount {mount['name']} has no volume")
                # Writable paths are scratch space; anything else is mounted read-only.
                if "emptyDir" not in volume:
                    self.assertIs(mount.get("readOnly"), True, f"{mount['name']} is writable")
                else:
                    self.assertIn("sizeLimit", volume["emptyDir"], f"{mount['name']} is unbounded")

    def test_writable_paths_are_mounted(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                mounts = {m["mountPath"] for m in container_of(deployment).get("volumeMounts", [])}
                self.assertIn(rendering.config()["POSTMESH_DATA_DIR"], mounts, "data dir not mounted")
                self.assertIn("/tmp", mounts)

    def test_deployment_selects_its_pods_and_rolls_safely(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                spec = deployment["spec"]
                labels = spec["template"]["metadata"]["labels"]
                self.assertTrue(selects(spec["selector"]["matchLabels"], labels))
                self.assertEqual(labels.get("app.kubernetes.io/component"), component)
                strategy = spec["strategy"]
                self.assertEqual(strategy["type"], "RollingUpdate")
                self.assertEqual(strategy["rollingUpdate"]["maxUnavailable"], 0)
                # No other component's Deployment claims these pods.
                for other, d in rendering.component_deployments().items():
                    if other != component:
                        self.assertFalse(selects(d["spec"]["selector"]["matchLabels"], labels),
                                         f"{other}'s Deployment selects {component}'s pods")

    def test_services_select_the_pods(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                labels = deployment["spec"]["template"]["metadata"]["labels"]
                container = container_of(deployment)
                services = [s for s in rendering.of_kind("Service") if selects(s["spec"].get("selector"), labels)]
                name = deployment["metadata"]["name"]
                expected = [name] if component == "gateway" else [name, f"{name}-headless"]
                for service_name in expected:
                    service = rendering.named("Service", service_name)
                    self.assertIsNotNone(service, f"no Service {service_name}")
                    self.assertTrue(selects(service["spec"].get("selector"), labels),
                                    f"Service {service_name} does not select the pods")
                    self.assertEqual(service["metadata"]["labels"].get("app.kubernetes.io/component"), component)
                deployments = rendering.of_kind("Deployment")
                for service in services:
                    # Exactly this component's pods: no other Deployment matches.
                    for other in deployments:
                        if other is not deployment:
                            self.assertFalse(selects(service["spec"]["selector"],
                                                     other["spec"]["template"]["metadata"]["labels"]),
                                             f"{service['metadata']['name']} also selects {other['metadata']['name']}")
                    for port in service["spec"]["ports"]:
                        port_number(container, port.get("targetPort", port["port"]))
                if component == "gateway":
                    http = [p for s in services for p in s["spec"]["ports"] if p.get("targetPort") == "http"]
                    self.assertTrue(http, "no Service exposes the gateway's HTTP port")
                else:
                    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
                    self.assertEqual(len(headless), 1, "expected one headless Service")
                    self.assertFalse(headless[0]["spec"].get("publishNotReadyAddresses", False))
                    grpc = [p for p in headless[0]["spec"]["ports"] if p.get("targetPort") == "grpc"]
                    self.assertTrue(grpc, "headless Service without the grpc port")

    def test_callers_are_pointed_at_the_headless_services(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                if component == "gateway":
                    continue
                url = rendering.config().get(f"POSTMESH_{component.upper()}_URL")
                self.assertIsNotNone(url, "no URL for the service in the ConfigMap")
                match = re.fullmatch(r"http://([a-z0-9-]+):([0-9]+)", url)
                self.assertIsNotNone(match, f"unexpected URL {url!r}")
                service = rendering.named("Service", match.group(1))
                self.assertIsNotNone(service, f"{url} names no Service of the release")
                self.assertEqual(service["spec"].get("clusterIP"), "None", f"{url} is not a headless Service")
                labels = deployment["spec"]["template"]["metadata"]["labels"]
                self.assertTrue(selects(service["spec"]["selector"], labels), f"{url} does not reach {component}")
                # Headless: the client connects to the pod on the URL's port.
                self.assertEqual(int(match.group(2)), port_number(container_of(deployment), "grpc"))

    def test_network_policy(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                labels = deployment["spec"]["template"]["metadata"]["labels"]
                container = container_of(deployment)
                policies = [p for p in rendering.of_kind("NetworkPolicy")
                            if selects(p["spec"]["podSelector"].get("matchLabels"), labels)]
                self.assertTrue(policies, "no NetworkPolicy selects the pods")
                for policy in policies:
                    self.assertIn("Ingress", policy["spec"]["policyTypes"])
                rules = [r for p in policies for r in p["spec"].get("ingress", [])]
                serving = "http" if component == "gateway" else "grpc"
                serving_port = port_number(container, serving)
                rules_for_port = [r for r in rules
                                  if any(port_number(container, p["port"]) == serving_port for p in r.get("ports", []))]
                self.assertTrue(rules_for_port, f"nothing may reach the {serving} port")
                for rule in rules:
                    self.assertTrue(rule.get("ports"), "a rule opens every port")
                if component != "gateway":
                    release = {k: v for k, v in labels.items()
                               if k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
                    for rule in rules_for_port:
                        peers = rule.get("from")
                        self.assertTrue(peers, "the gRPC port is open to everyone")
                        for peer in peers:
                            self.assertNotIn("ipBlock", peer, "the gRPC port is open to addresses")
                            self.assertNotIn("namespaceSelector", peer, "the gRPC port is open to other namespaces")
                            self.assertEqual(peer["podSelector"].get("matchLabels"), release,
                                             "the gRPC port is open to pods outside the release")

    def test_termination_covers_the_drain(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                pod = deployment["spec"]["template"]["spec"]
                grace = parse_duration_seconds(rendering.config()["POSTMESH_SHUTDOWN_GRACE"])
                pre_stop = (((container_of(deployment).get("lifecycle") or {}).get("preStop") or {})
                            .get("sleep") or {}).get("seconds", 0)
                self.assertGreater(pod.get("terminationGracePeriodSeconds", 30), grace + pre_stop,
                                   "Kubernetes would kill the process before it drains")

    def test_secrets_stay_out_of_the_config_map(self):
        for path, _ in RENDERINGS:
            with self.subTest(file=path):
                config = load(path).config()
                self.assertFalse(SECRET_VARIABLES & set(config), "a secret is in the ConfigMap")
                self.assertNotIn("POSTMESH_AUTH_KEYS", config)

    def test_secret_references_resolve(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                env = {e["name"]: e for e in container_of(deployment).get("env", [])}
                wanted = {"POSTMESH_REDIS_URL", "POSTMESH_AUTH_SERVICE_SECRET"}
                if component != "gateway":
                    wanted = SECRET_VARIABLES
                for name in wanted:
                    self.assertIn(name, env, f"{name} not set")
                    ref = env[name].get("valueFrom", {}).get("secretKeyRef")
                    self.assertIsNotNone(ref, f"{name} is not read from a Secret")
                    secret = rendering.named("Secret", ref["name"])
                    if secret is not None:  # otherwise a Secret the operator manages
                        self.assertIn(ref["key"], secret.get("data", {}), f"{name}: no key {ref['key']}")
                if component == "gateway":
                    self.assertNotIn("POSTMESH_DATABASE_URL", env, "the gateway has no database")

    def test_only_the_user_service_holds_signing_keys(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                container = container_of(deployment)
                env = {e["name"]: e for e in container.get("env", [])}
                mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
                if component != "user":
                    self.assertNotIn("POSTMESH_AUTH_KEYS", env)
                    continue
                files = env["POSTMESH_AUTH_KEYS"]["value"].split(",")
                self.assertTrue(files)
                volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
                for file in files:
                    directory, name = file.rsplit("/", 1)
                    self.assertIn(directory, mounts, f"{file} is not mounted")
                    volume = volumes[mounts[directory]["name"]]
                    items = [i["path"] for i in volume["secret"].get("items", [])]
                    self.assertIn(name, items)

    def test_gateway_is_reachable_from_outside_only_through_its_service(self):
        for path, expected in RENDERINGS:
            rendering = load(path)
            for ingress in rendering.of_kind("Ingress"):
                with self.subTest(file=path, ingress=ingress["metadata"]["name"]):
                    for rule in ingress["spec"]["rules"]:
                        for p in rule["http"]["paths"]:
                            backend = p["backend"]["service"]
                            service = rendering.named("Service", backend["name"])
                            self.assertIsNotNone(service)
                            gateway = rendering.component_deployments()["gateway"]
                            self.assertTrue(selects(service["spec"]["selector"],
                                                    gateway["spec"]["template"]["metadata"]["labels"]))
                            ports = {sp.get("name"): sp for sp in service["spec"]["ports"]}
                            self.assertEqual(ports[backend["port"]["name"]]["targetPort"], "http")
            for service in rendering.of_kind("Service"):
                if service["spec"].get("type", "ClusterIP") in ("LoadBalancer", "NodePort"):
                    with self.subTest(file=path, service=service["metadata"]["name"]):
                        gateway = rendering.component_deployments().get("gateway")
                        self.assertTrue(gateway and selects(service["spec"]["selector"],
                                                            gateway["spec"]["template"]["metadata"]["labels"]),
                                        "only the gateway may be exposed outside the cluster")

    def test_autoscalers_and_budgets_target_real_workloads(self):
        for path, _ in RENDERINGS:
            rendering = load(path)
            deployments = {d["metadata"]["name"]: d for d in rendering.of_kind("Deployment")}
            for hpa in rendering.of_kind("HorizontalPodAutoscaler"):
                with self.subTest(file=path, hpa=hpa["metadata"]["name"]):
                    target = deployments.get(hpa["spec"]["scaleTargetRef"]["name"])
                    self.assertIsNotNone(target)
                    self.assertNotIn("replicas", target["spec"], "replicas fight the autoscaler")
                    self.assertLessEqual(hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
                    cpu = target["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
                    self.assertIn("cpu", cpu, "CPU utilization needs a CPU request")
            for pdb in rendering.of_kind("PodDisruptionBudget"):
                with self.subTest(file=path, pdb=pdb["metadata"]["name"]):
                    matched = [d for d in deployments.values()
                               if selects(pdb["spec"]["selector"]["matchLabels"],
                                          d["spec"]["template"]["metadata"]["labels"])]
                    self.assertEqual(len(matched), 1)
                    replicas = matched[0]["spec"].get("replicas")
                    self.assertTrue(replicas is None or replicas > 1, "a budget over a single pod blocks drains")

    def test_metrics_scrape_the_admin_port(self):
        for rendering, component, deployment in self.each():
            with self.subTest(file=rendering.path, component=component):
                container = container_of(deployment)
                admin = port_number(container, "admin")
                listen = rendering.config()["POSTMESH_ADMIN_LISTEN"]
                self.assertEqual(int(listen.rsplit(":", 1)[1]), admin)
                annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
                if "prometheus.io/port" in annotations:
                    self.assertEqual(int(annotations["prometheus.io/port"]), admin)
                    self.assertEqual(annotations.get("prometheus.io/path"), "/metrics")
                monitors = rendering.of_kind("ServiceMonitor")
                for monitor in monitors:
                    labels = deployment["spec"]["template"]["metadata"]["labels"]
                    scraped = [s for s in rendering.of_kind("Service")
                               if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
                               and selects(s["spec"]["selector"], labels)
                               and any(p.get("name") == "admin" for p in s["spec"]["ports"])]
                    self.assertEqual(len(scraped), 1, "the ServiceMonitor should scrape each pod once")

    def test_migrations_run_as_a_hook(self):
        for path, _ in RENDERINGS:
            with self.subTest(file=path):
                rendering = load(path)
                jobs = [j for j in rendering.of_kind("Job")
                        if j["spec"]["template"]["spec"]["containers"][0].get("args") == ["migrate"]]
                self.assertEqual(len(jobs), 1, "one `postmesh migrate` Job")
                hooks = jobs[0]["metadata"]["annotations"]["helm.sh/hook"].split(",")
                self.assertIn("pre-upgrade", hooks)
                self.assertTrue({"pre-install", "post-install"} & set(hooks))
                env = {e["name"] for e in jobs[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
                self.assertIn("POSTMESH_DATABASE_URL", env)


def main():
    args = sys.argv[1:]
    renderings = [a for a in args if not a.startswith("-")]
    for spec in renderings:
        path, _, components = spec.partition("=")
        RENDERINGS.append((path, components.split(",") if components else list(ALL_COMPONENTS)))
    unittest.main(argv=[sys.argv[0]] + [a for a in args if a.startswith("-")], verbosity=1)


if __name__ == "__main__":
    main()
