-- Replays pre-built requests from a file, each exactly once, and reports as JSON.
--
--   wrk -t2 -c64 -d20s -s loadtests/wrk/requests.lua http://127.0.0.1:PORT -- REQUESTS_FILE RESULT_FILE 2
--
-- One request per line, tab-separated: method, path, bearer token, Idempotency-Key, body,
-- client address for X-Forwarded-For (an empty field leaves that part out). Bookings need distinct national IDs and keys, so
-- no line is sent twice: thread i of n takes lines i, i+n, i+2n, ... and stops when they run
-- out (the last argument is wrk's -t), so a run is bounded by the file as well as by -d. The done() hook writes requests,
-- latency percentiles (microseconds) and a count per "status code" / "status code:problem
-- code" to RESULT_FILE for the Python side to read.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("id", thread_count)
  table.insert(threads, thread)
  thread_count = thread_count + 1
end

function init(args)
  local path = args[1]
  result_file = args[2]
  local thread_total = tonumber(args[3])
  local lines = {}
  local index = 0
  for line in io.lines(path) do
    if index % thread_total == id then
      table.insert(lines, line)
    end
    index = index + 1
  end
  requests = lines
  next_request = 1
  statuses = {}
  exhausted = false
end

local function split(line)
  local fields = {}
  for field in string.gmatch(line .. "\t", "([^\t]*)\t") do
    table.insert(fields, field)
  end
  return fields
end

function request()
  local line = requests[next_request]
  if line == nil then
    -- Out of requests: stop this thread; wrk still needs a request string to return.
    exhausted = true
    wrk.thread:stop()
    return wrk.format("GET", "/health/live")
  end
  next_request = next_request + 1
  local f = split(line)
  local headers = {}
  if f[3] ~= "" then headers["Authorization"] = "Bearer " .. f[3] end
  if f[4] ~= "" then headers["Idempotency-Key"] = f[4] end
  if f[6] ~= nil and f[6] ~= "" then headers["X-Forwarded-For"] = f[6] end
  local body = nil
  if f[5] ~= nil and f[5] ~= "" then
    body = f[5]
    headers["Content-Type"] = "application/json"
  end
  return wrk.format(f[1], f[2], headers, body)
end

function response(status, headers, body)
  local key = tostring(status)
  if status >= 400 then
    local code = string.match(body or "", '"code"%s*:%s*"([^"]+)"')
    if code then key = key .. ":" .. code end
  end
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  local exhausted = false
  for _, thread in ipairs(threads) do
    if thread:get("exhausted") then exhausted = true end
    local counts = thread:get("statuses") or {}
    for key, count in pairs(counts) do
      merged[key] = (merged[key] or 0) + count
    end
  end
  local parts = {}
  for key, count in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', key, count))
  end
  local e = summary.errors
  local out = io.open(threads[1]:get("result_file"), "w")
  out:write(string.format(
    '{"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p95": %d, "p99": %d, "max": %d, "mean": %.1f}, ' ..
    '"statuses": {%s}, "exhausted": %s}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean,
    table.concat(parts, ", "), tostring(exhausted)))
  out:close()
end
