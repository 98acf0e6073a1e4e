-- wrk script for `make bench`: POSTs the body file named by $BENCH_BODY (a plain GET when it is
-- empty) and, when done, prints one line "BENCH_JSON {...}" with the counts and the latency
-- percentiles in microseconds.
local path = os.getenv("BENCH_BODY")
if path and path ~= "" then
  local f = assert(io.open(path, "rb"), "cannot open BENCH_BODY " .. tostring(path))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  local hlen = os.getenv("BENCH_HEADER_LENGTH")
  if hlen and hlen ~= "" then
    -- The binary tensor extension: a JSON header of this many bytes, then the raw tensors.
    wrk.headers["Inference-Header-Content-Length"] = hlen
    wrk.headers["Content-Type"] = "application/octet-stream"
  else
    wrk.headers["Content-Type"] = "application/json"
  end
else
  wrk.method = "GET"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"status_errors":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
