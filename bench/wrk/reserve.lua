-- reserve.lua: wrk drives Tollgate's POST /v1/reserve, quantity 1, for a random user.
--
--   wrk -t2 -c50 -d10s --latency -s bench/wrk/reserve.lua http://127.0.0.1:PORT
--
-- Settings come from the environment (wrk passes no options to a script's request()):
--   TG_KEY      the bearer key, a test secret key                           (required)
--   TG_USERS    users to spread over; user i is "<TG_PREFIX>u<i>"           (default 10000)
--   TG_PREFIX   prefix of every user id, so runs on one server stay apart   (default "wrk_")
--   TG_USER     send every reserve for this one user instead                (optional)
--   TG_TTL      ttlSeconds of each reservation                (default: the server's, 60 s)
--   TG_MAX      stop each wrk thread after this many answers             (default: no limit)
--
-- Every answer is checked: a status outside 200..299 counts as an error, and a 2xx whose body
-- holds no reservation id counts as a denial (the benchmark plan must never deny). done()
-- prints one line starting "WRK_RESULT", which scripts/bench-wrk.sh reads.

local key = os.getenv("TG_KEY") or error("TG_KEY is not set")
local users = tonumber(os.getenv("TG_USERS") or "10000")
local prefix = os.getenv("TG_PREFIX") or "wrk_"
local fixed_user = os.getenv("TG_USER")
local ttl = os.getenv("TG_TTL")
local max_answers = tonumber(os.getenv("TG_MAX") or "0")

local headers = {
  ["Authorization"] = "Bearer " .. key,
  ["Content-Type"] = "application/json",
}
local ttl_field = ttl and (',"ttlSeconds":' .. ttl) or ""

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  non2xx, denied, answers = 0, 0, 0
  first_error = nil
end

function request()
  local user = fixed_user or (prefix .. "u" .. math.random(0, users - 1))
  local body = '{"userId":"' .. user .. '","event":"bench.op","quantity":1' .. ttl_field .. '}'
  return wrk.format("POST", "/v1/reserve", headers, body)
end

function response(status, _, body)
  answers = answers + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    first_error = first_error or (status .. " " .. string.sub(body or "", 1, 200))
  elseif not string.find(body, '"reservationId":"', 1, true) then
    denied = denied + 1
    first_error = first_error or ("denied: " .. string.sub(body or "", 1, 200))
  end
  if max_answers > 0 and answers >= max_answers then
    wrk.thread:stop()
  end
end

function done(summary, latency, _)
  local bad, refused, first = 0, 0, nil
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
    refused = refused + thread:get("denied")
    first = first or thread:get("first_error")
  end
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "non2xx=%d denied=%d socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    bad, refused, e.connect + e.read + e.write + e.timeout))
  if first then
    io.write("WRK_FIRST_ERROR " .. first .. "\n")
  end
end
