/**
 * Errors of postmesh calls: every failed call rejects with a
 * {@link PostmeshError}, a `ConnectError` whose `google.rpc` details are
 * already decoded (the fields at fault, when to retry, why).
 */
import { createRegistry } from "@bufbuild/protobuf";
import type { Registry } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import { file_google_rpc_error_details } from "./gen/google/rpc/error_details_pb.js";
import type {
  BadRequest,
  BadRequest_FieldViolation,
  DebugInfo,
  ErrorInfo,
  Help,
  LocalizedMessage,
  PreconditionFailure,
  QuotaFailure,
  RequestInfo,
  ResourceInfo,
  RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";

/** One of the standard `google.rpc` error details a postmesh error can carry. */
export type ErrorDetail =
  | BadRequest
  | DebugInfo
  | ErrorInfo
  | Help
  | LocalizedMessage
  | PreconditionFailure
  | QuotaFailure
  | RequestInfo
  | ResourceInfo
  | RetryInfo;

/** One field of a request that postmesh refused, and why. */
export type FieldViolation = BadRequest_FieldViolation;

/** The header postmesh answers every call with; quote it when asking for help. */
const REQUEST_ID_HEADER = "x-request-id";

// The detail types a server may attach (`grpc-status-details-bin`). Details
// of any other type stay available, undecoded, in `details`.
const errorDetailTypes: Registry = createRegistry(file_google_rpc_error_details);

/**
 * A failed postmesh call: the gRPC code, the server's message and its
 * `google.rpc` details, decoded.
 *
 * It is a `ConnectError` (so `instanceof ConnectError` and Connect's own
 * helpers keep working) with typed views of the details:
 *
 * ```ts
 * try {
 *   await pm.users.register({ email: "nope", password, displayName: "Ada" });
 * } catch (err) {
 *   if (isPostmeshError(err, Code.InvalidArgument)) {
 *     for (const v of err.fieldViolations) console.log(v.field, v.description);
 *   }
 * }
 * ```
 */
export class PostmeshError extends ConnectError {
  /** Every detail of a standard `google.rpc` type, in the order sent. */
  readonly errorDetails: readonly ErrorDetail[];

  constructor(
    message: string,
    code: Code = Code.Unknown,
    metadata?: ConstructorParameters<typeof ConnectError>[2],
    details: ConnectError["details"] = [],
    cause?: unknown,
  ) {
    super(message, code, metadata, undefined, cause);
    this.details = details;
    this.errorDetails = this.findDetails(errorDetailTypes) as ErrorDetail[];
  }

  /**
   * `reason` as a `PostmeshError`: a `ConnectError` keeps its code, message,
   * metadata and details; anything else becomes `Unknown` (or `code`).
   */
  static override from(reason: unknown, code: Code = Code.Unknown): PostmeshError {
    if (reason instanceof PostmeshError) {
      return reason;
    }
    const connect = ConnectError.from(reason, code);
    return new PostmeshError(connect.rawMessage, connect.code, connect.metadata, connect.details, connect.cause);
  }

  // ConnectError recognises its instances by shape, which every ConnectError
  // has; a PostmeshError is only what this class (or a subclass) built.
  static override [Symbol.hasInstance](value: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }

  /** The code's name, such as `InvalidArgument` or `Unauthenticated`. */
  get codeName(): string {
    return Code[this.code];
  }

  /** The `BadRequest` detail: the request's invalid fields. */
  get badRequest(): BadRequest | undefined {
    return this.detailOf("google.rpc.BadRequest");
  }

  /**
   * Every field violation of the `BadRequest` detail (empty if there is
   * none). `field` is the request field's path, such as `email` or
   * `platform_overrides[0].text`.
   */
  get fieldViolations(): readonly FieldViolation[] {
    return this.badRequest?.fieldViolations ?? [];
  }

  /** The `ErrorInfo` detail: a machine-readable reason and its domain. */
  get errorInfo(): ErrorInfo | undefined {
    return this.detailOf("google.rpc.ErrorInfo");
  }

  /** The `RetryInfo` detail: how long to wait before trying again. */
  get retryInfo(): RetryInfo | undefined {
    return this.detailOf("google.rpc.RetryInfo");
  }

  /** The wait `RetryInfo` asks for, in milliseconds; undefined without one. */
  get retryDelayMs(): number | undefined {
    const delay = this.retryInfo?.retryDelay;
    return delay === undefined ? undefined : durationMs(delay);
  }

  /** The id postmesh gave the call, if the failure came from the server. */
  get requestId(): string | undefined {
    return this.metadata.get(REQUEST_ID_HEADER) ?? undefined;
  }

  private detailOf<T extends ErrorDetail["$typeName"]>(
    typeName: T,
  ): Extract<ErrorDetail, { $typeName: T }> | undefined {
    return this.errorDetails.find(
      (detail): detail is Extract<ErrorDetail, { $typeName: T }> => detail.$typeName === typeName,
    );
  }
}

/**
 * True if `value` is a {@link PostmeshError}, and, with `code`, one with that
 * code.
 */
export function isPostmeshError(value: unknown, code?: Code): value is PostmeshError {
  return value instanceof PostmeshError && (code === undefined || value.code === code);
}
