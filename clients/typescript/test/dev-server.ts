/**
 * A real `postmesh dev` for the tests: on free ports, with a scratch data
 * directory and none of the caller's `POSTMESH_*` settings.
 *
 * The binary is `POSTMESH_BIN`, or `target/debug/postmesh` of the repository
 * (built with `cargo build -p postmesh` when it is missing).
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** How long a cold start may take before the tests give up. */
const READY_TIMEOUT_MS = 60_000;

export interface DevServer {
  /** The gRPC address as a client's `baseUrl`. */
  baseUrl: string;
  /** The HTTP gateway's address. */
  httpUrl: string;
  stop(): Promise<void>;
}

export async function startDevServer(): Promise<DevServer> {
  const binary = postmeshBinary();
  const dataDir = mkdtempSync(join(tmpdir(), "postmesh-ts-"));
  const stderrPath = join(dataDir, "stderr.log");
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("POSTMESH_")));
  const child = spawn(
    binary,
    ["dev", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir", join(dataDir, "data")],
    { cwd: dataDir, env: { ...env, POSTMESH_LOG: "warn" }, stdio: ["ignore", "pipe", openSync(stderrPath, "w")] },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      await exited;
    }
    rmSync(dataDir, { recursive: true, force: true });
  };

  try {
    const line = await readyLine(child.stdout!, exited);
    const address = (name: string): string => {
      const found = line.split(" ").find((part) => part.startsWith(`${name}=`));
      if (found === undefined) throw new Error(`the ready line names no ${name} address: ${line}`);
      return `http://${found.slice(name.length + 1)}`;
    };
    return { baseUrl: address("grpc"), httpUrl: address("http"), stop };
  } catch (err) {
    const stderr = existsSync(stderrPath) ? readFileSync(stderrPath, "utf8") : "";
    await stop();
    throw new Error(`postmesh dev did not start: ${String(err)}\n${stderr}`);
  }
}

/** The `postmesh ready …` line, or a rejection if the process ends or stalls first. */
function readyLine(stdout: NodeJS.ReadableStream, exited: Promise<void>): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready line after ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
    const lines = createInterface({ input: stdout });
    lines.on("line", (line) => {
      if (line.startsWith("postmesh ready")) {
        clearTimeout(timer);
        resolve(line);
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error("the process exited before it was ready"));
    });
  });
}

function postmeshBinary(): string {
  const configured = process.env["POSTMESH_BIN"];
  if (configured) return configured;
  const root = repositoryRoot();
  const binary = join(root, "target", "debug", "postmesh");
  if (!existsSync(binary)) {
    const build = spawnSync("cargo", ["build", "-p", "postmesh"], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
    if (build.status !== 0) throw new Error(`cargo build -p postmesh failed (${build.error ?? `exit ${build.status}`})`);
  }
  return binary;
}

/** The repository holding this package: the nearest directory above with `proto/buf.yaml`. */
function repositoryRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "proto", "buf.yaml"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("not inside the postmesh repository; set POSTMESH_BIN");
    dir = parent;
  }
  return dir;
}
