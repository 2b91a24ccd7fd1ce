-- wrk script: POSTs callback bodies read from the file named by $BODIES (one
-- JSON body per line), each thread starting at its own offset, and prints the
-- run's figures as one JSON line prefixed "RESULT " when done.

local bodies = {}
-- CONNECTION_CLOSE=1: every callback on a connection of its own, as a client that
-- keeps none alive sends them; wrk connects again after each answer.
local headers = { ["Content-Type"] = "application/json" }
if os.getenv("CONNECTION_CLOSE") == "1" then
  headers["Connection"] = "close"
end
local next_body = 0
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  local file = assert(io.open(os.getenv("BODIES"), "r"))
  for line in file:lines() do
    bodies[#bodies + 1] = line
  end
  file:close()
  assert(#bodies > 0, "no bodies in " .. os.getenv("BODIES"))
  next_body = ((thread_index or 0) * 97) % #bodies
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[next_body])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_timeout":%d,"errors_status":%d,"mean_us":%.1f,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
