/**
 * User tokens (API.md §12): a short-lived signed statement that lets a browser, holding only a
 * publishable key, read one user's usage and credits. `mintUserToken` makes, without a round
 * trip, the same token `POST /v1/user-tokens` answers, from the three values `GET /v1/settings`
 * shows a secret key (`tokenSecret`, `projectId`, `environment`). The token secret signs tokens
 * for every user of its environment, so minting belongs on your server, like a secret key.
 *
 * Format, version 1 (the contract's; the server verifies the HMAC over the exact characters it
 * receives before the ".", then parses the JSON):
 *
 *     token   = "tg_ut_" + B64(payload) + "." + B64(HMAC-SHA256(key, "tg_ut_" + B64(payload)))
 *     B64     = base64url without padding (RFC 4648 §5)
 *     key     = the UTF-8 bytes of the whole token secret, prefix included
 *     payload = UTF-8 JSON {"v": 1, "prj": projectId, "env": environment, "sub": userId, "exp": unix seconds}
 *
 * The HMAC is node:crypto's, found when first needed rather than imported: a static
 * `import "node:crypto"` would stop browser bundlers and edge runtimes from loading the whole
 * SDK, whose other calls (reserve, `meUsage` with a publishable key) need no Node at all.
 */

import type { Environment, MintUserTokenInput, UserToken } from "./types.js";

const USER_TOKEN_PREFIX = "tg_ut_";
const USER_TOKEN_VERSION = 1;
/** A token's lifetime when none is given. */
const USER_TOKEN_TTL_SECONDS_DEFAULT = 3_600;
/** The longest lifetime the server accepts (a day). */
const USER_TOKEN_TTL_SECONDS_MAX = 86_400;
/** The longest token the server accepts; a token is ASCII, so characters are bytes. */
const USER_TOKEN_BYTES_MAX = 1_024;
/** The API's bound on a user id (§1), in UTF-8 bytes. */
const USER_ID_BYTES_MAX = 256;
/** `tg_ts_<env>_` then 32 random bytes in base64url without padding: 43 characters. */
const TOKEN_SECRET = /^tg_ts_(test|live)_[A-Za-z0-9_-]{43}$/;
/** Unicode's control characters (category Cc): C0, DEL and C1. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
/** A UTF-16 surrogate without its partner: no UTF-8 encoding exists for it. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/**
 * Signs a user token offline with the environment's token secret. Answers `{ token, expiresAt }`,
 * like `createUserToken`. Throws a `TypeError` naming the input at fault (the secret itself is
 * never quoted), or an `Error` where node:crypto is missing (browsers, some edge runtimes).
 */
export function mintUserToken(input: MintUserTokenInput): UserToken {
  if (input === null || typeof input !== "object") {
    throw new TypeError("mintUserToken: expected { tokenSecret, projectId, environment, userId, ttlSeconds?, now? }");
  }
  const { tokenSecret, projectId, environment, userId } = input;
  const ttlSeconds = input.ttlSeconds ?? USER_TOKEN_TTL_SECONDS_DEFAULT;
  checkEnvironment(environment);
  checkTokenSecret(tokenSecret, environment);
  checkProjectId(projectId);
  checkUserId(userId);
  checkTtlSeconds(ttlSeconds);
  const exp = unixSeconds(input.now) + ttlSeconds;

  const payload = JSON.stringify({ v: USER_TOKEN_VERSION, prj: projectId, env: environment, sub: userId, exp });
  const signed = USER_TOKEN_PREFIX + base64url(utf8(payload));
  const token = `${signed}.${base64url(hmacSha256(utf8(tokenSecret), utf8(signed)))}`;
  if (token.length > USER_TOKEN_BYTES_MAX) {
    throw new TypeError(
      `mintUserToken: the token would be ${token.length} bytes, over the server's ${USER_TOKEN_BYTES_MAX}; shorten \`userId\``,
    );
  }
  return { token, expiresAt: rfc3339Seconds(exp) };
}

function checkEnvironment(environment: unknown): asserts environment is Environment {
  if (environment !== "test" && environment !== "live") {
    throw new TypeError('mintUserToken: `environment` must be "test" or "live"');
  }
}

function checkTokenSecret(tokenSecret: unknown, environment: Environment): asserts tokenSecret is string {
  const match = typeof tokenSecret === "string" ? TOKEN_SECRET.exec(tokenSecret) : null;
  if (match === null) {
    throw new TypeError(
      "mintUserToken: `tokenSecret` must be a token secret, `tg_ts_test_` or `tg_ts_live_` and 43 base64url " +
        "characters (GET /v1/settings shows it as `tokenSecret`)",
    );
  }
  if (match[1] !== environment) {
    throw new TypeError(
      `mintUserToken: \`tokenSecret\` is the ${match[1]} environment's secret but \`environment\` is "${environment}"`,
    );
  }
}

function checkProjectId(projectId: unknown): asserts projectId is string {
  if (typeof projectId !== "string" || !projectId.startsWith("prj_") || projectId.length === 4 || CONTROL.test(projectId)) {
    throw new TypeError("mintUserToken: `projectId` must be the project's id, `prj_…` (GET /v1/settings shows it as `projectId`)");
  }
}

function checkUserId(userId: unknown): asserts userId is string {
  if (typeof userId !== "string") throw new TypeError("mintUserToken: `userId` must be a string");
  if (LONE_SURROGATE.test(userId)) throw new TypeError("mintUserToken: `userId` is not valid Unicode (a lone surrogate)");
  const bytes = utf8(userId).length;
  if (bytes < 1 || bytes > USER_ID_BYTES_MAX) {
    throw new TypeError(`mintUserToken: \`userId\` must be 1–${USER_ID_BYTES_MAX} UTF-8 bytes, not ${bytes}`);
  }
  if (CONTROL.test(userId)) throw new TypeError("mintUserToken: `userId` must not contain control characters");
}

function checkTtlSeconds(ttlSeconds: unknown): asserts ttlSeconds is number {
  if (typeof ttlSeconds !== "number" || !Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > USER_TOKEN_TTL_SECONDS_MAX) {
    throw new TypeError(`mintUserToken: \`ttlSeconds\` must be an integer from 1 to ${USER_TOKEN_TTL_SECONDS_MAX}`);
  }
}

/** Whole seconds since the epoch of `now` (a Date or epoch milliseconds), rounded down. */
function unixSeconds(now: Date | number | undefined): number {
  const ms = now === undefined ? Date.now() : now instanceof Date ? now.getTime() : now;
  if (typeof ms !== "number" || !Number.isFinite(ms)) {
    throw new TypeError("mintUserToken: `now` must be a valid Date or milliseconds since the epoch");
  }
  return Math.floor(ms / 1000);
}

/** `2026-12-01T20:00:00Z`: the server's own way of writing `expiresAt`. */
function rfc3339Seconds(unix: number): string {
  return new Date(unix * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
}

function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** RFC 4648 §5 base64url, without padding. */
function base64url(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out += B64URL[(n >> 18) & 63] + B64URL[(n >> 12) & 63];
    if (i + 1 < bytes.length) out += B64URL[(n >> 6) & 63];
    if (i + 2 < bytes.length) out += B64URL[n & 63];
  }
  return out;
}

/** The part of node:crypto used here. */
interface NodeCrypto {
  createHmac(algorithm: "sha256", key: Uint8Array): { update(data: Uint8Array): { digest(): Uint8Array } };
}

/** CommonJS's `require`: present in the CommonJS build, absent from the ES module build. */
declare const require: ((id: string) => unknown) | undefined;

function hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array {
  return nodeCrypto().createHmac("sha256", key).update(data).digest();
}

/**
 * node:crypto without a static import: `process.getBuiltinModule` (Node 20.16+ and 22.3+, Bun,
 * Deno), else CommonJS's `require` (the CommonJS build on any Node 18+).
 */
function nodeCrypto(): NodeCrypto {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
  const builtin = proc?.getBuiltinModule?.("node:crypto");
  if (builtin !== undefined) return builtin as NodeCrypto;
  const load = typeof require === "function" ? require : undefined;
  if (load !== undefined) return load("node:crypto") as NodeCrypto;
  throw new Error(
    "mintUserToken needs node:crypto (Node 20.16+ or 22.3+, Bun, Deno, or this SDK's CommonJS build on Node 18+); " +
      "mint on your server, or call createUserToken",
  );
}
