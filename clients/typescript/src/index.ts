/**
 * `@postmesh/client`: typed gRPC clients for postmesh.
 *
 * {@link createClient} connects; every request and response type, enum and
 * service descriptor of the public contract is exported from here too. Files
 * not re-exported here (service events, jobs) are under
 * `@postmesh/client/gen/…`, such as `@postmesh/client/gen/postmesh/content/v1/events_pb.js`.
 */
export { DEFAULT_TIMEOUT_MS, authenticate, createClient } from "./client.js";
export type { ClientOptions, Credentials, PostmeshClient, TokenSource } from "./client.js";
export { PostmeshError, isPostmeshError } from "./errors.js";
export type { ErrorDetail, FieldViolation } from "./errors.js";

// What callers need next to the generated types: gRPC codes, the base error
// class, and building messages and timestamps.
export { Code, ConnectError } from "@connectrpc/connect";
export type { CallOptions, Client, Interceptor } from "@connectrpc/connect";
export { create, fromJson, toJson } from "@bufbuild/protobuf";
export { durationFromMs, durationMs, timestampDate, timestampFromDate, timestampNow } from "@bufbuild/protobuf/wkt";
export type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";

export * from "./gen/postmesh/ai/v1/ai_pb.js";
export * from "./gen/postmesh/analytics/v1/analytics_pb.js";
export * from "./gen/postmesh/content/v1/content_pb.js";
export * from "./gen/postmesh/notification/v1/notification_pb.js";
export * from "./gen/postmesh/social/v1/social_pb.js";
export * from "./gen/postmesh/type/v1/media_pb.js";
export * from "./gen/postmesh/type/v1/platform_pb.js";
export * from "./gen/postmesh/type/v1/role_pb.js";
export * from "./gen/postmesh/type/v1/text_pb.js";
export * from "./gen/postmesh/user/v1/user_pb.js";
export * from "./gen/postmesh/webhook/v1/webhook_pb.js";
export * from "./gen/google/rpc/error_details_pb.js";
