-- POST a small chat completion; BENCH_BODY_BYTES pads the prompt. Prints one JSON line at the end.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-or-v1-bench0000000000000000"
local pad = tonumber(os.getenv("BENCH_BODY_BYTES") or "0")
wrk.body = '{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi' .. string.rep("x", pad) .. '"}]}'

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
