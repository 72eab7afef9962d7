/**
 * The client against a real `postmesh dev`: the quick start, credentials,
 * typed errors, streams and deadlines. One server for the whole file (node's
 * runner starts a process per file).
 */
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { runQuickstart } from "../examples/quickstart.js";
import {
  Code,
  ConnectError,
  Platform,
  PostStatus,
  TargetStatus,
  createClient,
  isPostmeshError,
  timestampFromDate,
} from "../src/index.js";
import type { PostmeshClient, PostmeshError, PublishingStatus } from "../src/index.js";
import { startDevServer } from "./dev-server.js";
import type { DevServer } from "./dev-server.js";

const DAY_MS = 24 * 60 * 60 * 1000;

describe("against postmesh dev", () => {
  let server: DevServer;
  const clients: PostmeshClient[] = [];

  before(async () => {
    server = await startDevServer();
  });

  after(async () => {
    for (const client of clients) client.close();
    await server?.stop();
  });

  /** A client for `server`, closed when the tests end. */
  function connect(options: { timeoutMs?: number } = {}): PostmeshClient {
    const client = createClient({ baseUrl: server.baseUrl, ...options });
    clients.push(client);
    return client;
  }

  /** A new account's email, password and signed-in client. */
  async function signUp(): Promise<{ email: string; password: string; pm: PostmeshClient }> {
    const email = `ts.${randomUUID()}@example.com`;
    const password = `ts-${randomBytes(12).toString("hex")}`;
    const anonymous = connect();
    const { tokens } = await anonymous.users.register({ email, password, displayName: "TypeScript" });
    assert.ok(tokens?.accessToken, "Register returns an access token");
    return { email, password, pm: anonymous.withToken(tokens.accessToken) };
  }

  /** A post scheduled far ahead, so nothing publishes it during the test. */
  async function schedulePost(pm: PostmeshClient): Promise<string> {
    const { account } = await pm.social.connectAccount({
      platform: Platform.WEBHOOK,
      // Connecting a webhook makes no network call, and this post is never
      // sent, so the URL need not answer.
      credentials: { url: `http://127.0.0.1:9/${randomUUID()}`, secret: `whsec_${randomBytes(24).toString("base64")}` },
    });
    assert.ok(account);
    const { post } = await pm.content.createPost({
      text: "Later",
      targetAccountIds: [account.id],
      publishAt: timestampFromDate(new Date(Date.now() + 300 * DAY_MS)),
    });
    assert.equal(post?.status, PostStatus.SCHEDULED);
    return post.id;
  }

  describe("the quick start", () => {
    test("registers, posts to two webhook accounts and sees both posted", async () => {
      const outcome = await runQuickstart({ baseUrl: server.baseUrl, log: () => {} });

      const settled = outcome.statuses.at(-1);
      assert.equal(settled?.settled, true);
      assert.equal(PostStatus[settled.status], "POSTED");
      assert.deepEqual(
        settled.targets.map((t) => TargetStatus[t.status]),
        ["POSTED", "POSTED"],
      );
      assert.deepEqual(outcome.deliveries.map((d) => d.path).sort(), ["/alpha", "/beta"]);
      for (const delivery of outcome.deliveries) {
        assert.match(delivery.text, /Hello from the postmesh TypeScript SDK/);
      }
      assert.notEqual(outcome.deliveries[0]?.webhookId, outcome.deliveries[1]?.webhookId);
    });

    test("logs in with an email and password", async () => {
      const { email, password } = await signUp();
      const outcome = await runQuickstart({ baseUrl: server.baseUrl, email, password, log: () => {} });
      assert.equal(outcome.statuses.at(-1)?.status, PostStatus.POSTED);
      assert.equal(outcome.deliveries.length, 2);
    });

    test("uses an API key", async () => {
      const { pm } = await signUp();
      const { secret } = await pm.users.createApiKey({
        name: "quick start",
        scopes: ["accounts:read", "accounts:write", "posts:read", "posts:write"],
      });
      assert.match(secret, /^pm_/);
      const outcome = await runQuickstart({ baseUrl: server.baseUrl, apiKey: secret, log: () => {} });
      assert.equal(outcome.statuses.at(-1)?.status, PostStatus.POSTED);
      assert.equal(outcome.deliveries.length, 2);
    });
  });

  describe("errors", () => {
    test("a wrong token is an Unauthenticated PostmeshError", async () => {
      const pm = connect().withToken("not-a-token");
      await assert.rejects(pm.users.getProfile({}), (err: unknown) => {
        assert.ok(isPostmeshError(err, Code.Unauthenticated), `unexpected error: ${String(err)}`);
        assert.ok(err instanceof ConnectError, "still a ConnectError");
        assert.equal(err.codeName, "Unauthenticated");
        assert.ok(err.requestId, "the server's request id is kept");
        return true;
      });
    });

    test("an unknown API key is an Unauthenticated PostmeshError", async () => {
      const pm = connect().withApiKey(`pm_${"x".repeat(40)}`);
      await assert.rejects(pm.social.listAccounts({}), (err: unknown) => isPostmeshError(err, Code.Unauthenticated));
    });

    test("an invalid argument carries its field violation", async () => {
      const pm = connect();
      const request = { email: "not-an-email", password: `ts-${randomBytes(12).toString("hex")}`, displayName: "Ada" };
      await assert.rejects(pm.users.register(request), (err: unknown) => {
        assert.ok(isPostmeshError(err, Code.InvalidArgument), `unexpected error: ${String(err)}`);
        assert.deepEqual(
          err.fieldViolations.map((v) => v.field),
          ["email"],
        );
        assert.ok(err.fieldViolations[0]?.description, "the violation says what is wrong");
        assert.equal(err.badRequest?.$typeName, "google.rpc.BadRequest");
        assert.deepEqual(
          err.errorDetails.map((d) => d.$typeName),
          ["google.rpc.BadRequest"],
        );
        return true;
      });
    });

    test("a post over a platform's limits names the field", async () => {
      const { pm } = await signUp();
      const { account } = await pm.social.connectAccount({
        platform: Platform.WEBHOOK,
        credentials: { url: "http://127.0.0.1:9/limits", secret: `whsec_${randomBytes(24).toString("base64")}` },
      });
      assert.ok(account);
      const tooMany = Array.from({ length: 11 }, (_, i) => ({ url: `https://example.com/${i}.png`, mimeType: "image/png" }));
      await assert.rejects(
        pm.content.createPost({ text: "Too much", media: tooMany, targetAccountIds: [account.id] }),
        (err: PostmeshError) => {
          assert.equal(err.code, Code.InvalidArgument);
          assert.ok(
            err.fieldViolations.some((v) => v.field === "media"),
            `violations: ${JSON.stringify(err.fieldViolations.map((v) => v.field))}`,
          );
          return true;
        },
      );
    });
  });

  describe("streams and deadlines", () => {
    test("WatchPostStatus sends the status now, then each change, and ends when settled", async () => {
      const { pm } = await signUp();
      const id = await schedulePost(pm);

      const stream = pm.content.watchPostStatus({ id })[Symbol.asyncIterator]();
      const first = await stream.next();
      assert.equal(first.done, false);
      assert.equal(first.value.status?.status, PostStatus.SCHEDULED);
      assert.equal(first.value.status?.settled, false);

      await pm.content.cancelPost({ id });
      const rest: PublishingStatus[] = [];
      for (let next = await stream.next(); !next.done; next = await stream.next()) {
        if (next.value.status) rest.push(next.value.status);
      }
      const last = rest.at(-1);
      assert.equal(last?.status, PostStatus.CANCELLED);
      assert.equal(last.settled, true);
      assert.deepEqual(
        last.targets.map((t) => t.status),
        [TargetStatus.CANCELLED],
      );
      assert.ok(rest.slice(0, -1).every((s) => !s.settled), "only the last message is settled");
    });

    test("a stream's deadline ends it with DeadlineExceeded", async () => {
      const { pm } = await signUp();
      const id = await schedulePost(pm);

      const seen: PublishingStatus[] = [];
      const started = performance.now();
      await assert.rejects(
        async () => {
          for await (const { status } of pm.content.watchPostStatus({ id }, { timeoutMs: 500 })) {
            if (status) seen.push(status);
          }
        },
        (err: unknown) => isPostmeshError(err, Code.DeadlineExceeded),
      );
      const elapsed = performance.now() - started;
      assert.deepEqual(
        seen.map((s) => s.status),
        [PostStatus.SCHEDULED],
      );
      assert.ok(elapsed >= 490 && elapsed < 5_000, `ended after ${elapsed} ms`);
    });

    test("the client's default deadline applies to unary calls, and a call's own overrides it", async () => {
      const pm = connect({ timeoutMs: 1 });
      const register = () => ({
        email: `ts.${randomUUID()}@example.com`,
        password: `ts-${randomBytes(12).toString("hex")}`,
        displayName: "Deadline",
      });
      await assert.rejects(pm.users.register(register()), (err: unknown) => isPostmeshError(err, Code.DeadlineExceeded));
      const { user } = await pm.users.register(register(), { timeoutMs: 10_000 });
      assert.ok(user?.id);
    });
  });
});
