// The usage-bar widget in a page, and the app backend it needs (API.md §12). Node 18+, no
// dependencies: only the built-in `http` module and fetch.
//
// The backend holds the secret key and never gives it to the browser. It gives the browser
// the publishable key and a short-lived user token it mints for the signed-in user (here
// always "demo_user"), and the widget reads that user's usage straight from Tollgate. The page
// is served from another origin than Tollgate, so at startup the backend adds its own origin
// to the environment's corsOrigins (PATCH /v1/settings).
//
//   GET  /          index.html with the base URL, publishable key and a fresh user token
//   POST /generate  reserve one image.render for demo_user and commit it; answers the commit
//                   (200), the refusal (429, with the limits) or Tollgate's error (502)
//
// Environment: TOLLGATE_URL, TOLLGATE_SECRET_KEY, TOLLGATE_PUBLISHABLE_KEY (required);
// PORT (default 3000; 0 picks a free one); HOST (default 127.0.0.1).

import { readFile } from "node:fs/promises";
import http from "node:http";

const USER_ID = "demo_user";
const EVENT = "image.render";
// How long a token minted for one page view lets the widget read usage.
const USER_TOKEN_TTL_SECONDS = 3600;
// A call to Tollgate that takes longer is abandoned.
const TOLLGATE_TIMEOUT_MS = 10_000;
// The example's own request bodies are tiny; a bigger one is refused unread.
const REQUEST_BODY_BYTES_MAX = 16 * 1024;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`widget example: set ${name} (see README.md)`);
    process.exit(1);
  }
  return value;
}

const tollgateUrl = required("TOLLGATE_URL").replace(/\/+$/, "");
const secretKey = required("TOLLGATE_SECRET_KEY");
const publishableKey = required("TOLLGATE_PUBLISHABLE_KEY");
const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT ?? 3000);
const template = await readFile(new URL("./index.html", import.meta.url), "utf8");

class TollgateError extends Error {
  constructor(status, body) {
    super(`Tollgate answered ${status}: ${JSON.stringify(body)}`);
    this.status = status;
    this.body = body;
  }
}

// Calls Tollgate with the secret key; resolves to the JSON answer, rejects with TollgateError.
async function tollgate(method, path, body) {
  const response = await fetch(tollgateUrl + path, {
    method,
    headers: { Authorization: `Bearer ${secretKey}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(TOLLGATE_TIMEOUT_MS),
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) throw new TollgateError(response.status, answer);
  return answer;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function send(res, status, type, body) {
  res.writeHead(status, { "Content-Type": type, "Cache-Control": "no-store" });
  res.end(body);
}

function sendJson(res, status, value) {
  send(res, status, "application/json", JSON.stringify(value));
}

async function page(res) {
  const { token } = await tollgate("POST", "/v1/user-tokens", {
    userId: USER_ID,
    ttlSeconds: USER_TOKEN_TTL_SECONDS,
  });
  const values = { BASE_URL: tollgateUrl, PUBLISHABLE_KEY: publishableKey, USER_TOKEN: token };
  const html = template.replace(/\{\{(\w+)\}\}/g, (whole, name) =>
    name in values ? escapeHtml(values[name]) : whole,
  );
  send(res, 200, "text/html; charset=utf-8", html);
}

// One image "generation": hold a unit of the quota, do the work (none here), commit the hold.
async function generate(res) {
  const reserve = await tollgate("POST", "/v1/reserve", { userId: USER_ID, event: EVENT, quantity: 1 });
  if (!reserve.allowed) {
    sendJson(res, 429, { error: "quota_exceeded", reasons: reserve.reasons, limits: reserve.limits });
    return;
  }
  const commit = await tollgate(
    "POST",
    `/v1/reservations/${encodeURIComponent(reserve.reservationId)}/commit`,
    {},
  );
  sendJson(res, 200, commit);
}

// Drains a request body we do not need, refusing one too big to be ours.
async function drain(req) {
  let bytes = 0;
  for await (const chunk of req) {
    bytes += chunk.length;
    if (bytes > REQUEST_BODY_BYTES_MAX) return false;
  }
  return true;
}

const server = http.createServer(async (req, res) => {
  try {
    const path = new URL(req.url, "http://localhost").pathname;
    if (req.method === "GET" && path === "/") return await page(res);
    if (req.method === "POST" && path === "/generate") {
      if (!(await drain(req))) return sendJson(res, 413, { error: "payload_too_large" });
      return await generate(res);
    }
    if (path === "/favicon.ico") return send(res, 204, "text/plain", "");
    return sendJson(res, 404, { error: "not_found" });
  } catch (error) {
    console.error(`widget example: ${req.method} ${req.url}: ${error.message}`);
    if (!res.headersSent)
      sendJson(res, 502, { error: "tollgate_error", detail: error.body ?? error.message });
  }
});

// Adds this app's origins to the environment's corsOrigins, keeping those already listed.
async function allowOrigins(origins) {
  const settings = await tollgate("GET", "/v1/settings");
  const listed = Array.isArray(settings.corsOrigins) ? settings.corsOrigins : [];
  const missing = origins.filter((origin) => !listed.includes(origin));
  if (missing.length > 0) await tollgate("PATCH", "/v1/settings", { corsOrigins: [...listed, ...missing] });
  return [...listed, ...missing];
}

server.listen(port, host, async () => {
  const actualPort = server.address().port;
  const origins = [`http://${host}:${actualPort}`];
  if (host === "127.0.0.1") origins.push(`http://localhost:${actualPort}`);
  try {
    const listed = await allowOrigins(origins);
    console.log(`widget example: corsOrigins are now ${JSON.stringify(listed)}`);
  } catch (error) {
    console.error(`widget example: could not allow this origin in Tollgate's corsOrigins: ${error.message}`);
    process.exit(1);
  }
  console.log(`widget example: listening on http://${host}:${actualPort}`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections?.();
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
