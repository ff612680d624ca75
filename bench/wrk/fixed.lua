-- fixed.lua: wrk sends one fixed, authenticated request over and over, to measure Tollgate's
-- HTTP layer beside the reserve figure (scripts/bench-wrk.sh).
--
--   TG_KEY     the bearer key (a test secret key)      (required)
--   TG_METHOD  GET or POST                              (default GET)
--   TG_PATH    the route                                (default /v1/test/clock)
--   TG_BODY    a JSON body for POST                     (default none)
--
-- A status outside 200..299 counts as an error. done() prints one "WRK_RESULT" line, in the
-- same form as reserve.lua's.

local key = os.getenv("TG_KEY") or error("TG_KEY is not set")
local method = os.getenv("TG_METHOD") or "GET"
local path = os.getenv("TG_PATH") or "/v1/test/clock"
local body = os.getenv("TG_BODY")

local headers = { ["Authorization"] = "Bearer " .. key }
if body then
  headers["Content-Type"] = "application/json"
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  first_error = nil
  wrk.method, wrk.path, wrk.body, wrk.headers = method, path, body, headers
  req = wrk.format()
end

function request()
  return req
end

function response(status, _, answer)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    first_error = first_error or (status .. " " .. string.sub(answer or "", 1, 200))
  end
end

function done(summary, latency, _)
  local bad, first = 0, nil
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
    first = first or thread:get("first_error")
  end
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "non2xx=%d denied=0 socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    bad, e.connect + e.read + e.write + e.timeout))
  if first then
    io.write("WRK_FIRST_ERROR " .. first .. "\n")
  end
end
