/**
 * The quick start: sign in (or use an API key), connect two accounts,
 * publish one post to both and follow its status until it settles.
 *
 * The two accounts are signed webhooks pointing at a small HTTP receiver
 * this program starts, so nothing outside the machine is needed:
 *
 *   cargo run --release -- dev                       # in the repository root
 *   node dist/examples/quickstart.js                 # in clients/typescript
 *
 * Environment: POSTMESH_URL (default http://127.0.0.1:50051);
 * POSTMESH_API_KEY, or POSTMESH_EMAIL and POSTMESH_PASSWORD to log in;
 * with none of them it registers a new account.
 */
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { realpathSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";

import {
  Platform,
  PostStatus,
  TargetStatus,
  createClient,
  isPostmeshError,
} from "../src/index.js";
import type { PostmeshClient, PublishingStatus } from "../src/index.js";

/** Where to reach postmesh and as whom; see the top of this file. */
export interface QuickstartOptions {
  baseUrl: string;
  apiKey?: string | undefined;
  email?: string | undefined;
  password?: string | undefined;
  /** Where progress goes; `console.log` by default. */
  log?: (line: string) => void;
}

/** One post the receiver accepted. */
export interface Delivery {
  path: string;
  webhookId: string;
  text: string;
}

/** What the quick start did. */
export interface QuickstartOutcome {
  postId: string;
  /** Every status the stream sent, the settled one last. */
  statuses: PublishingStatus[];
  /** What the receiver got, in arrival order. */
  deliveries: Delivery[];
}

export async function runQuickstart(options: QuickstartOptions): Promise<QuickstartOutcome> {
  const log = options.log ?? console.log;
  const pm = await signIn(options, log);
  const receiver = await startReceiver();
  try {
    log(`receiver listening on ${receiver.url}`);

    // Two accounts on the generic webhook platform: each is a URL and a
    // signing secret (`whsec_` and base64 of random bytes).
    const accountIds: string[] = [];
    for (const path of ["/alpha", "/beta"]) {
      const { account } = await pm.social.connectAccount({
        platform: Platform.WEBHOOK,
        credentials: { url: `${receiver.url}${path}`, secret: receiver.secret },
      });
      if (account === undefined) throw new Error("ConnectAccount answered without an account");
      log(`connected ${account.displayName} (${account.id})`);
      accountIds.push(account.id);
    }

    // One post to both; the idempotency key makes the call safe to repeat.
    const { post } = await pm.content.createPost({
      text: "Hello from the **postmesh** TypeScript SDK #quickstart",
      targetAccountIds: accountIds,
      idempotencyKey: randomUUID(),
    });
    if (post === undefined) throw new Error("CreatePost answered without a post");
    log(`created post ${post.id} for ${post.targets.length} accounts`);

    // The stream sends the status now and after every change, and ends once
    // the post has settled.
    const statuses: PublishingStatus[] = [];
    for await (const { status } of pm.content.watchPostStatus({ id: post.id })) {
      if (status === undefined) continue;
      statuses.push(status);
      log(`status ${PostStatus[status.status]} (${status.counts?.posted ?? 0}/${status.targets.length} posted)`);
    }

    const last = statuses.at(-1);
    for (const target of last?.targets ?? []) {
      const reason = target.failure === undefined ? "" : `: ${target.failure.message}`;
      log(`  ${target.accountDisplayName}: ${TargetStatus[target.status]}${reason}`);
    }
    log(`receiver got ${receiver.deliveries.length} signed posts: ${receiver.deliveries.map((d) => d.path).join(", ")}`);
    return { postId: post.id, statuses, deliveries: receiver.deliveries };
  } finally {
    await receiver.close();
    pm.close();
  }
}

/** A client with credentials: the API key, a login, or a new account. */
async function signIn(options: QuickstartOptions, log: (line: string) => void): Promise<PostmeshClient> {
  const pm = createClient({ baseUrl: options.baseUrl });
  log(`postmesh at ${options.baseUrl}`);
  if (options.apiKey) {
    log("using the API key from POSTMESH_API_KEY");
    return pm.withApiKey(options.apiKey);
  }
  if (options.email && options.password) {
    const { result } = await pm.users.login({ email: options.email, password: options.password });
    if (result.case !== "tokens") {
      throw new Error("this account uses two-factor sign-in; use an API key (POSTMESH_API_KEY) instead");
    }
    log(`logged in as ${options.email}`);
    return pm.withToken(result.value.accessToken);
  }
  const email = `quickstart.${randomUUID()}@example.com`;
  const { tokens } = await pm.users.register({
    email,
    password: `qs-${randomBytes(12).toString("hex")}`,
    displayName: "Quick start",
  });
  if (tokens === undefined) throw new Error("Register answered without tokens");
  log(`registered ${email}`);
  return pm.withToken(tokens.accessToken);
}

interface Receiver {
  url: string;
  secret: string;
  deliveries: Delivery[];
  close(): Promise<void>;
}

/**
 * An HTTP server on a free local port that accepts posts signed with its
 * secret (Standard Webhooks: `webhook-signature` is `v1,` and the base64
 * HMAC-SHA256 of `<webhook-id>.<webhook-timestamp>.<body>`) and refuses
 * anything else with 401.
 */
async function startReceiver(): Promise<Receiver> {
  const key = randomBytes(24);
  const deliveries: Delivery[] = [];
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      const body = Buffer.concat(chunks);
      const id = String(request.headers["webhook-id"] ?? "");
      const timestamp = String(request.headers["webhook-timestamp"] ?? "");
      const signatures = String(request.headers["webhook-signature"] ?? "").split(" ");
      if (!signatures.some((s) => signatureMatches(key, id, timestamp, body, s))) {
        response.writeHead(401).end();
        return;
      }
      const post = JSON.parse(body.toString("utf8")) as { text?: string };
      deliveries.push({ path: request.url ?? "", webhookId: id, text: post.text ?? "" });
      response.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    secret: `whsec_${key.toString("base64")}`,
    deliveries,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        // postmesh keeps connections to a webhook open for the next post;
        // without this, close() would wait for it to let them go.
        server.closeAllConnections();
      }),
  };
}

function signatureMatches(key: Buffer, id: string, timestamp: string, body: Buffer, signature: string): boolean {
  if (!signature.startsWith("v1,")) return false;
  const expected = createHmac("sha256", key).update(`${id}.${timestamp}.`).update(body).digest();
  const given = Buffer.from(signature.slice(3), "base64");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

function invokedDirectly(): boolean {
  const script = process.argv[1];
  return script !== undefined && realpathSync(script) === fileURLToPath(import.meta.url);
}

if (invokedDirectly()) {
  runQuickstart({
    baseUrl: process.env["POSTMESH_URL"] ?? "http://127.0.0.1:50051",
    apiKey: process.env["POSTMESH_API_KEY"],
    email: process.env["POSTMESH_EMAIL"],
    password: process.env["POSTMESH_PASSWORD"],
  }).then(
    (outcome) => {
      const settled = outcome.statuses.at(-1);
      process.exitCode = settled?.status === PostStatus.POSTED ? 0 : 1;
    },
    (err: unknown) => {
      if (isPostmeshError(err)) {
        console.error(`postmesh said ${err.codeName}: ${err.rawMessage}`);
        for (const v of err.fieldViolations) console.error(`  ${v.field}: ${v.description}`);
      } else {
        console.error(err);
      }
      process.exitCode = 1;
    },
  );
}
