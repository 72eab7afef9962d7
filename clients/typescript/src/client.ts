/**
 * The postmesh client: one gRPC connection (HTTP/2) and a typed client per
 * service on top of it, with the caller's credentials, default deadlines and
 * typed errors.
 */
import type { DescMessage, DescMethodStreaming, DescMethodUnary, MessageInitShape } from "@bufbuild/protobuf";
import { createClient as createServiceClient } from "@connectrpc/connect";
import type {
  Client,
  ContextValues,
  Interceptor,
  StreamResponse,
  Transport,
  UnaryResponse,
} from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import { PostmeshError } from "./errors.js";
import { AiService } from "./gen/postmesh/ai/v1/ai_pb.js";
import { AnalyticsService } from "./gen/postmesh/analytics/v1/analytics_pb.js";
import { ContentService } from "./gen/postmesh/content/v1/content_pb.js";
import { NotificationService } from "./gen/postmesh/notification/v1/notification_pb.js";
import { SocialService } from "./gen/postmesh/social/v1/social_pb.js";
import { UserService } from "./gen/postmesh/user/v1/user_pb.js";
import { WebhookService } from "./gen/postmesh/webhook/v1/webhook_pb.js";

/** Headers a call adds, as Connect takes them. */
type CallHeaders = Parameters<Transport["unary"]>[3];

/** The deadline of a unary call that names none, in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 10_000;

/** An access token, or a function that returns the current one (to refresh it). */
export type TokenSource = string | (() => string | Promise<string>);

/** How to reach postmesh and who the caller is. */
export interface ClientOptions {
  /**
   * Where postmesh serves gRPC: `http://127.0.0.1:50051` for `postmesh dev`,
   * `https://…` behind TLS.
   */
  baseUrl: string;
  /**
   * An access token from `Register`, `Login`, `VerifyLogin` or
   * `RefreshToken`, or a function returning the current one; sent as
   * `authorization: Bearer <token>`. Give this or `apiKey`, not both.
   */
  token?: TokenSource;
  /** An API key (`pm_…`), sent as `authorization: Bearer pm_…`. */
  apiKey?: string;
  /**
   * The deadline of each unary call in milliseconds, unless the call gives
   * its own `{ timeoutMs }`. Default {@link DEFAULT_TIMEOUT_MS}. Streams
   * (such as `watchPostStatus`) have no deadline unless the call gives one,
   * since they last as long as what they watch.
   */
  timeoutMs?: number;
  /** More interceptors, run after the one that adds the credentials. */
  interceptors?: Interceptor[];
}

/** The credentials a client sends. */
export type Credentials = { token: TokenSource } | { apiKey: string } | Record<string, never>;

/** Typed clients for every postmesh service, sharing one connection. */
export interface PostmeshClient {
  /** Accounts, sign-in, API keys, workspaces and members. */
  readonly users: Client<typeof UserService>;
  /** Posts, templates, scheduling and publishing status. */
  readonly content: Client<typeof ContentService>;
  /** Connected social accounts, publishing and dead letters. */
  readonly social: Client<typeof SocialService>;
  /** Metrics and reports. */
  readonly analytics: Client<typeof AnalyticsService>;
  /** Writing help. */
  readonly ai: Client<typeof AiService>;
  /** Notifications and their live stream. */
  readonly notifications: Client<typeof NotificationService>;
  /** Incoming webhooks and their rules. */
  readonly webhooks: Client<typeof WebhookService>;
  /** A client on the same connection that sends `token` instead. */
  withToken(token: TokenSource): PostmeshClient;
  /** A client on the same connection that sends `apiKey` instead. */
  withApiKey(apiKey: string): PostmeshClient;
  /**
   * Closes the connection of this client and of every client made from it
   * with `withToken` or `withApiKey`; calls still running fail. Optional: an
   * idle connection does not keep Node.js running.
   */
  close(): void;
}

/**
 * Connects to postmesh (lazily: nothing happens until the first call).
 *
 * ```ts
 * const pm = createClient({ baseUrl: "http://127.0.0.1:50051", apiKey: process.env.POSTMESH_API_KEY });
 * const { accounts } = await pm.social.listAccounts({});
 * ```
 */
export function createClient(options: ClientOptions): PostmeshClient {
  const baseUrl = parseBaseUrl(options.baseUrl);
  if (options.token !== undefined && options.apiKey !== undefined) {
    throw new TypeError("give either token or apiKey, not both");
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new RangeError(`timeoutMs must be a positive number of milliseconds, not ${timeoutMs}`);
  }
  const connection = new Http2SessionManager(baseUrl);
  const credentials: Credentials =
    options.token !== undefined
      ? { token: options.token }
      : options.apiKey !== undefined
        ? { apiKey: options.apiKey }
        : {};
  return buildClient({ baseUrl, connection, timeoutMs, interceptors: options.interceptors ?? [] }, credentials);
}

/** What every client made from one `createClient` call shares. */
interface Shared {
  baseUrl: string;
  connection: Http2SessionManager;
  timeoutMs: number;
  interceptors: Interceptor[];
}

function buildClient(shared: Shared, credentials: Credentials): PostmeshClient {
  const grpc = createGrpcTransport({
    baseUrl: shared.baseUrl,
    sessionManager: shared.connection,
    // Credentials first, so the caller's interceptors see the call as sent.
    interceptors: [authenticate(credentials), ...shared.interceptors],
  });
  const transport = withDefaults(grpc, shared.timeoutMs);
  return {
    users: createServiceClient(UserService, transport),
    content: createServiceClient(ContentService, transport),
    social: createServiceClient(SocialService, transport),
    analytics: createServiceClient(AnalyticsService, transport),
    ai: createServiceClient(AiService, transport),
    notifications: createServiceClient(NotificationService, transport),
    webhooks: createServiceClient(WebhookService, transport),
    withToken: (token) => buildClient(shared, { token }),
    withApiKey: (apiKey) => buildClient(shared, { apiKey }),
    close: () => shared.connection.abort(),
  };
}

/** An interceptor that adds `authorization: Bearer …` to every call. */
export function authenticate(credentials: Credentials): Interceptor {
  return (next) => async (request) => {
    const secret =
      "apiKey" in credentials
        ? credentials.apiKey
        : "token" in credentials
          ? typeof credentials.token === "function"
            ? await credentials.token()
            : credentials.token
          : undefined;
    if (secret !== undefined && !request.header.has("authorization")) {
      request.header.set("authorization", `Bearer ${secret}`);
    }
    return next(request);
  };
}

/**
 * `inner` with a deadline on every unary call that names none, and every
 * failure (from the call or from reading a stream) as a PostmeshError.
 *
 * A wrapper rather than an interceptor: the deadline is fixed before
 * interceptors run, and errors raised while a stream is read reach the
 * caller without passing back through them.
 */
function withDefaults(inner: Transport, defaultTimeoutMs: number): Transport {
  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: CallHeaders,
      input: MessageInitShape<I>,
      contextValues?: ContextValues,
    ): Promise<UnaryResponse<I, O>> {
      try {
        return await inner.unary(method, signal, timeoutMs ?? defaultTimeoutMs, header, input, contextValues);
      } catch (err) {
        throw PostmeshError.from(err);
      }
    },
    async stream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodStreaming<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: CallHeaders,
      input: AsyncIterable<MessageInitShape<I>>,
      contextValues?: ContextValues,
    ): Promise<StreamResponse<I, O>> {
      let response: StreamResponse<I, O>;
      try {
        response = await inner.stream(method, signal, timeoutMs, header, input, contextValues);
      } catch (err) {
        throw PostmeshError.from(err);
      }
      return { ...response, message: typedErrors(response.message) };
    },
  };
}

async function* typedErrors<T>(messages: AsyncIterable<T>): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (err) {
    throw PostmeshError.from(err);
  }
}

function parseBaseUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new TypeError(`baseUrl must be an http:// or https:// URL, not ${JSON.stringify(value)}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`baseUrl must be an http:// or https:// URL, not ${JSON.stringify(value)}`);
  }
  return url.href.replace(/\/$/, "");
}
