-- wrk script of the bench: `wrk ... -s bench/lua/bench.lua URL -- MODE PRODUCTS TOKENS RUN_ID KEYS MAX_QTY`
--   MODE     plain : GET the URL as given (the hello-world baseline)
--            read  : GET /api/inventory/products/{id}, rotating over the product ids
--            pages : the storefront's pages through the gateway, rotating: the catalog, a search,
--                    a product's page, the sign-in page
--            place : POST /api/orders, one line (random product, quantity 1..MAX_QTY),
--                    rotating over the access tokens; KEYS=1 adds a unique Idempotency-Key
--   PRODUCTS file with one product id per line; TOKENS file with one access token per line
-- done() prints one line "BENCH_JSON {...}" with counts, status codes, 503s with Retry-After and latency
-- percentiles (us).

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local function read_lines(path)
  local out = {}
  if path == nil or path == "-" then return out end
  for line in io.lines(path) do
    if #line > 0 then out[#out + 1] = line end
  end
  return out
end

function init(args)
  mode = args[1] or "read"
  products = read_lines(args[2])
  tokens = read_lines(args[3])
  run_id = args[4] or "bench"
  use_keys = args[5] == "1"
  max_qty = tonumber(args[6] or "1") or 1
  counter = 0
  statuses = {}
  retry_after = 0  -- 503 answers that carry a Retry-After header (admission control)
  math.randomseed(os.time() * 1000 + tid * 7919)
  -- threads start at different offsets so they do not walk the lists in step
  offset = (tid - 1) * 9973
end

function request()
  counter = counter + 1
  if mode == "plain" then
    return wrk.request()
  end
  if mode == "read" then
    local id = products[((counter + offset) % #products) + 1]
    return wrk.format("GET", "/api/inventory/products/" .. id)
  end
  if mode == "pages" then
    local turn = (counter + offset) % 4
    if turn == 0 then return wrk.format("GET", "/") end
    if turn == 1 then return wrk.format("GET", "/?q=bench") end
    if turn == 2 then return wrk.format("GET", "/login") end
    return wrk.format("GET", "/products/" .. products[((counter + offset) % #products) + 1])
  end
  local token = tokens[((counter + offset) % #tokens) + 1]
  local product = products[math.random(#products)]
  local body = string.format('{"items":[{"product_id":"%s","quantity":%d}]}', product, math.random(max_qty))
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
  if use_keys then
    headers["Idempotency-Key"] = string.format("%s-%d-%d", run_id, tid, counter)
  end
  return wrk.format("POST", "/api/orders", headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and (headers["Retry-After"] or headers["retry-after"]) then
    retry_after = retry_after + 1
  end
end

function done(summary, latency, requests)
  local codes, refused = {}, 0
  for _, thread in ipairs(threads) do
    refused = refused + (thread:get("retry_after") or 0)
    local s = thread:get("statuses")
    if s then
      for code, n in pairs(s) do
        codes[code] = (codes[code] or 0) + n
      end
    end
  end
  local parts = {}
  for code, n in pairs(codes) do
    parts[#parts + 1] = string.format('"%d":%d', code, n)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d},' ..
    '"statuses":{%s},"retry_after_503":%d}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9),
    table.concat(parts, ","), refused))
end
