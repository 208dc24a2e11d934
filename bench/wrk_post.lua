-- wrk script: small non-streaming POST /v1/responses, and a one-line JSON
-- summary (WRKJSON ...) that bench/clients.py parses. Latencies in microseconds.
wrk.method = "POST"
wrk.body = '{"model":"gpt-bench","input":[{"role":"user","content":[{"type":"input_text","text":"Say hello."}]}],"stream":false}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "responses-api-proxy-bench"
wrk.headers["x-bench-mode"] = "json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50":%d,"p99":%d,"mean":%.1f,"max":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max))
end
