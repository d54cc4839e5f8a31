-- wrk script: POST a fixed JSON body with extra headers, both from the environment.
--   BENCH_BODY_FILE  path of the request body (JSON)
--   BENCH_HEADERS    header lines "Name: value", separated by newlines
-- Used by bench/run.py for every target, so direct and gateway runs send the same bytes.
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^%s*([^:]+):%s*(.-)%s*$")
  if name then
    wrk.headers[name] = value
  end
end
