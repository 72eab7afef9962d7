/**
 * What the client sends, seen by an interceptor that answers every call
 * itself, so no server is needed: credentials, deadlines, and failures
 * turned into PostmeshErrors.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Interceptor } from "@connectrpc/connect";

import { BadRequestSchema, PostmeshError, createClient, isPostmeshError } from "../src/index.js";
import type { ClientOptions } from "../src/index.js";

/** Headers of one call, as the last interceptor saw them. */
type Seen = Headers[];

/** An interceptor that records each call's headers and fails it with `failure`. */
function answerWith(seen: Seen, failure: ConnectError): Interceptor {
  return () => async (request) => {
    seen.push(new Headers(request.header));
    throw failure;
  };
}

/** A client whose calls never leave the process. */
function offline(options: Partial<ClientOptions>, seen: Seen, failure = new ConnectError("stop", Code.Aborted)) {
  return createClient({
    // Nothing listens here; the interceptor answers before any connection.
    baseUrl: "http://127.0.0.1:9",
    ...options,
    interceptors: [answerWith(seen, failure)],
  });
}

describe("credentials", () => {
  test("an API key goes out as a bearer token", async () => {
    const seen: Seen = [];
    await assert.rejects(offline({ apiKey: "pm_key" }, seen).social.listAccounts({}));
    assert.equal(seen[0]?.get("authorization"), "Bearer pm_key");
  });

  test("a token function is asked on every call", async () => {
    const seen: Seen = [];
    let calls = 0;
    const pm = offline({ token: () => `token-${++calls}` }, seen);
    await assert.rejects(pm.users.getProfile({}));
    await assert.rejects(pm.users.getProfile({}));
    assert.deepEqual(
      seen.map((h) => h.get("authorization")),
      ["Bearer token-1", "Bearer token-2"],
    );
  });

  test("withToken and withApiKey change only the credentials", async () => {
    const seen: Seen = [];
    const pm = offline({}, seen);
    await assert.rejects(pm.users.getProfile({}));
    await assert.rejects(pm.withToken("t").users.getProfile({}));
    await assert.rejects(pm.withApiKey("pm_k").users.getProfile({}));
    assert.deepEqual(
      seen.map((h) => h.get("authorization")),
      [null, "Bearer t", "Bearer pm_k"],
    );
  });

  test("a call's own authorization header wins", async () => {
    const seen: Seen = [];
    const pm = offline({ apiKey: "pm_key" }, seen);
    await assert.rejects(pm.users.getProfile({}, { headers: { authorization: "Bearer other" } }));
    assert.equal(seen[0]?.get("authorization"), "Bearer other");
  });

  test("options that contradict each other are refused", () => {
    assert.throws(() => createClient({ baseUrl: "http://127.0.0.1:1", token: "t", apiKey: "k" }), TypeError);
    assert.throws(() => createClient({ baseUrl: "127.0.0.1:50051" }), TypeError);
    assert.throws(() => createClient({ baseUrl: "http://127.0.0.1:1", timeoutMs: 0 }), RangeError);
  });
});

describe("deadlines", () => {
  test("unary calls get the client's deadline unless they name one", async () => {
    const seen: Seen = [];
    const pm = offline({ timeoutMs: 1_500 }, seen);
    await assert.rejects(pm.users.getProfile({}));
    await assert.rejects(pm.users.getProfile({}, { timeoutMs: 250 }));
    assert.deepEqual(
      seen.map((h) => h.get("grpc-timeout")),
      ["1500m", "250m"],
    );
  });

  test("streams get no deadline unless they name one", async () => {
    const seen: Seen = [];
    const pm = offline({}, seen);
    const drain = async (stream: AsyncIterable<unknown>) => {
      for await (const _ of stream);
    };
    await assert.rejects(drain(pm.content.watchPostStatus({ id: "p" })));
    await assert.rejects(drain(pm.content.watchPostStatus({ id: "p" }, { timeoutMs: 400 })));
    assert.deepEqual(
      seen.map((h) => h.get("grpc-timeout")),
      [null, "400m"],
    );
  });
});

describe("errors", () => {
  test("failures of unary calls and streams are PostmeshErrors with decoded details", async () => {
    const failure = new ConnectError("invalid request: email: is required", Code.InvalidArgument, undefined, [
      {
        desc: BadRequestSchema,
        value: create(BadRequestSchema, { fieldViolations: [{ field: "email", description: "is required" }] }),
      },
    ]);
    const pm = offline({}, [], failure);
    const check = (err: unknown): boolean => {
      assert.ok(isPostmeshError(err, Code.InvalidArgument), `unexpected error: ${String(err)}`);
      assert.ok(err instanceof ConnectError);
      assert.equal(err.rawMessage, "invalid request: email: is required");
      assert.deepEqual(
        err.fieldViolations.map((v) => [v.field, v.description]),
        [["email", "is required"]],
      );
      return true;
    };
    await assert.rejects(pm.users.register({}), check);
    await assert.rejects(async () => {
      for await (const _ of pm.content.watchPostStatus({ id: "p" }));
    }, check);
  });

  test("only errors the client made are PostmeshErrors", () => {
    assert.equal(new ConnectError("plain") instanceof PostmeshError, false);
    assert.equal(isPostmeshError(new Error("plain")), false);
    const converted = PostmeshError.from(new Error("boom"));
    assert.ok(isPostmeshError(converted, Code.Unknown));
    assert.equal(PostmeshError.from(converted), converted);
    assert.deepEqual(converted.fieldViolations, []);
    assert.equal(converted.retryDelayMs, undefined);
  });
});
