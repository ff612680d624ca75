/**
 * `@tollgate/sdk`: a dependency-free client for the Tollgate HTTP API, for Node 18+, Bun,
 * Deno, edge runtimes and browsers (secret-key calls and `mintUserToken` belong on a server;
 * a browser holds a publishable key and a user token).
 */
export { Tollgate } from "./client.js";
export type {
  CommitSpec,
  FlushResult,
  ReservationHandle,
  TollgateOptions,
  UnreachablePolicy,
  WithReservationInput,
  WithReservationResult,
} from "./client.js";
export { QuotaExceededError, TollgateError, TollgateNetworkError } from "./errors.js";
export type { PendingFailOpenUsage } from "./failopen.js";
export type { FetchLike } from "./http.js";
export { mintUserToken } from "./usertoken.js";
export * from "./types.js";
