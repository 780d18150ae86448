-- wrk script for elastic-http: a mix of PUT /kv/{key}, GET /kv/{key} and POST /work over KEYS keys.
-- Each wrk thread must have exactly one connection (-t N -c N): wrk then sends a request only after the previous
-- response, so `response` always answers the thread's last `request`, and the PUTs that got a 200 can be counted
-- per key. `done` prints them as "put KEY COUNT" lines for load.sh to compare with the server's counters, and one
-- "result ..." line with the run's figures (load.sh reads both).
-- load.sh puts every key once before wrk starts, so a GET answered 404 is a lost key: every answer but 200 counts.
local KEYS = 64
local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   puts = {}          -- key -> PUTs answered 200 (global: read by done through thread:get)
   errors = 0         -- answers that were not 200
   last_kind, last_key = nil, nil
   math.randomseed(os.time() + id * 7919)
end

function request()
   local key = "k" .. math.random(0, KEYS - 1)
   local dice = math.random(1, 10)
   if dice <= 5 then
      last_kind, last_key = "put", key
      return wrk.format("PUT", "/kv/" .. key)
   elseif dice <= 8 then
      last_kind, last_key = "get", key
      return wrk.format("GET", "/kv/" .. key)
   else
      last_kind, last_key = "work", nil
      return wrk.format("POST", "/work?rounds=2000", nil, "some bytes to hash, again and again")
   end
end

function response(status, headers, body)
   if status == 200 then
      if last_kind == "put" then puts[last_key] = (puts[last_key] or 0) + 1 end
   else
      errors = errors + 1
   end
   last_kind, last_key = nil, nil
end

function done(summary, latency, requests)
   local total, errs = {}, 0
   for _, thread in ipairs(threads) do
      for key, count in pairs(thread:get("puts")) do total[key] = (total[key] or 0) + count end
      errs = errs + thread:get("errors")
   end
   for key, count in pairs(total) do io.write(string.format("put %s %d\n", key, count)) end
   -- wrk counts answers >= 400 itself (errors.status); the script counts every answer but 200: the larger wins.
   local e = summary.errors
   io.write(string.format(
      "result requests %d duration_us %d non2xx %d socket_errors %d p50_us %d p99_us %d max_us %d\n",
      summary.requests, summary.duration, math.max(errs, e.status), e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
end
