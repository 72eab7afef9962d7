{{/*
Names. The full name is kept to 40 characters so that every object name
built from it (`<fullname>-notification-headless` is the longest) stays a
valid 63-character DNS label.
*/}}
{{- define "postmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "postmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* (dict "root" $ "name" "user") -> <fullname>-user */}}
{{- define "postmesh.componentFullname" -}}
{{- printf "%s-%s" (include "postmesh.fullname" .root) .name -}}
{{- end -}}

{{- define "postmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "postmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "postmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "postmesh.labels" -}}
helm.sh/chart: {{ include "postmesh.chart" . }}
{{ include "postmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: postmesh
{{- end -}}

{{/* (dict "root" $ "name" "user") */}}
{{- define "postmesh.componentSelectorLabels" -}}
{{ include "postmesh.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "postmesh.componentLabels" -}}
{{ include "postmesh.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "postmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "postmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "postmesh.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "postmesh.configMapName" -}}
{{- printf "%s-config" (include "postmesh.fullname" .) -}}
{{- end -}}

{{- define "postmesh.secretName" -}}
{{- default (printf "%s-secrets" (include "postmesh.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "postmesh.authKeysSecretName" -}}
{{- default (include "postmesh.secretName" .) .Values.secrets.authKeysSecret -}}
{{- end -}}

{{/* The mesh services, in the order the binary starts them. */}}
{{- define "postmesh.meshServices" -}}
user content social analytics ai notification webhook
{{- end -}}

{{/*
Variables the chart sets itself; setting them under `env` would silently
disagree with the Services, probes or termination grace the chart renders.
*/}}
{{- define "postmesh.reservedEnv" -}}
{{- $reserved := dict
  "POSTMESH_LISTEN" "set from ports.grpc"
  "POSTMESH_HTTP_LISTEN" "set from ports.http"
  "POSTMESH_ADMIN_LISTEN" "set from ports.admin"
  "POSTMESH_DATA_DIR" "an emptyDir mounted by the chart"
  "POSTMESH_SHUTDOWN_GRACE" "set from shutdownGraceSeconds, which also sets terminationGracePeriodSeconds"
  "POSTMESH_DATABASE_URL" "a secret: secrets.databaseUrl or the existing Secret"
  "POSTMESH_REDIS_URL" "a secret: secrets.redisUrl or the existing Secret"
  "POSTMESH_NATS_URL" "a secret: secrets.natsUrl or the existing Secret"
  "POSTMESH_AUTH_SERVICE_SECRET" "a secret: secrets.serviceSecret or the existing Secret"
  "POSTMESH_ENCRYPTION_KEYS" "a secret: secrets.encryptionKeys or the existing Secret"
  "POSTMESH_AUTH_KEYS" "set from secrets.authKeyFiles"
-}}
{{- range (splitList " " (include "postmesh.meshServices" .)) -}}
{{- $_ := set $reserved (printf "POSTMESH_%s_URL" (upper .)) (printf "set by the chart; use components.%s.externalUrl" .) -}}
{{- end -}}
{{- toJson $reserved -}}
{{- end -}}

{{/* (dict "root" $ "where" "env" "env" $map): fails on a reserved name. */}}
{{- define "postmesh.checkEnv" -}}
{{- $reserved := include "postmesh.reservedEnv" .root | fromJson -}}
{{- range $name, $_ := .env -}}
{{- if hasKey $reserved $name -}}
{{- fail (printf "%s.%s: not settable here (%s)" $.where $name (get $reserved $name)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* (dict "dst" $a "src" $b): merges $b into $a, maps recursively; null deletes. */}}
{{- define "postmesh.deepMerge" -}}
{{- $dst := .dst -}}
{{- range $k, $v := .src -}}
{{- if kindIs "invalid" $v -}}
{{- /* null removes the key, as it does in Helm values */ -}}
{{- $_ := unset $dst $k -}}
{{- else if and (kindIs "map" $v) (kindIs "map" (get $dst $k)) -}}
{{- $inner := deepCopy (get $dst $k) -}}
{{- $_ := include "postmesh.deepMerge" (dict "dst" $inner "src" $v) -}}
{{- $_ := set $dst $k $inner -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
(dict "root" $ "out" $out): sets $out.items to the enabled components,
each `componentDefaults` merged with its entry plus `name` and `gateway`
(bool), sorted by name; $out.all holds every component, enabled or not.
Unknown component names and unknown keys fail the render.
*/}}
{{- define "postmesh.resolveComponents" -}}
{{- $root := .root -}}
{{- $known := append (splitList " " (include "postmesh.meshServices" $root)) "gateway" -}}
{{- $items := list -}}
{{- $all := list -}}
{{- range $name, $raw := $root.Values.components -}}
{{- if not (has $name $known) -}}
{{- fail (printf "components.%s: unknown component (known: %s)" $name (join ", " $known)) -}}
{{- end -}}
{{- $c := deepCopy $root.Values.componentDefaults -}}
{{- range $key, $_ := ($raw | default dict) -}}
{{- if not (hasKey $root.Values.componentDefaults $key) -}}
{{- fail (printf "components.%s.%s: unknown key (known: %s)" $name $key (keys $root.Values.componentDefaults | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- $_ := include "postmesh.deepMerge" (dict "dst" $c "src" ($raw | default dict)) -}}
{{- $_ := set $c "name" $name -}}
{{- $_ := set $c "gateway" (eq $name "gateway") -}}
{{- $_ := include "postmesh.checkEnv" (dict "root" $root "where" (printf "components.%s.env" $name) "env" $c.env) -}}
{{- $all = append $all $c -}}
{{- if $c.enabled -}}
{{- $items = append $items $c -}}
{{- end -}}
{{- end -}}
{{- $_ := set .out "items" $items -}}
{{- $_ := set .out "all" $all -}}
{{- end -}}

{{/* Whether the chart creates the Secret. */}}
{{- define "postmesh.createSecret" -}}
{{- if not .Values.secrets.existingSecret -}}true{{- end -}}
{{- end -}}

{{/*
(dict "root" $ "component" $c): the secret variables a component gets. The
gateway has no database and no job bus, and encrypts nothing at rest.
*/}}
{{- define "postmesh.secretEnv" -}}
{{- $root := .root -}}
{{- $vars := dict
  "databaseUrl" "POSTMESH_DATABASE_URL"
  "redisUrl" "POSTMESH_REDIS_URL"
  "natsUrl" "POSTMESH_NATS_URL"
  "serviceSecret" "POSTMESH_AUTH_SERVICE_SECRET"
  "encryptionKeys" "POSTMESH_ENCRYPTION_KEYS"
-}}
{{- $wants := list "databaseUrl" "redisUrl" "natsUrl" "serviceSecret" "encryptionKeys" -}}
{{- if .component.gateway -}}
{{- $wants = list "redisUrl" "serviceSecret" -}}
{{- end -}}
{{- range $wants }}
- name: {{ get $vars . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "postmesh.secretName" $root }}
      key: {{ get $root.Values.secrets.keys . }}
{{- end }}
{{- end -}}

{{- define "postmesh.authKeysDir" -}}/etc/postmesh/auth-keys{{- end -}}

{{/* seconds: preStop sleep + drain + time to close connections and exit */}}
{{- define "postmesh.terminationGracePeriodSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (int .Values.shutdownGraceSeconds) 10 -}}
{{- end -}}
