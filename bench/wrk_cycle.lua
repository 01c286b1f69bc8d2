-- wrk script for `tailor bench api`: cycles through prebuilt requests.
--
--   wrk ... -s bench/wrk_cycle.lua URL -- REQUESTS_FILE [cached]
--
-- REQUESTS_FILE holds one request a line: METHOD<TAB>PATH[<TAB>BODY] (the body
-- one line of JSON). Headers common to all (X-API-Key, Content-Type) come from
-- wrk's -H flags. With "cached", each response body is searched for
-- "cached":true and done() prints "tailor-cached HITS RESPONSES".

local prepared = {}
local count, next_index = 0, 0
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   if path == nil then
      error("wrk_cycle.lua needs a requests file: wrk ... URL -- FILE")
   end
   for line in io.lines(path) do
      local method, target, body = line:match("^(%u+)\t([^\t]+)\t?(.*)$")
      if method ~= nil then
         if body == "" then body = nil end
         count = count + 1
         prepared[count] = wrk.format(method, target, nil, body)
      end
   end
   if count == 0 then
      error("no requests in " .. path)
   end
   if args[2] == "cached" then
      hits, seen = 0, 0
      response = function(status, headers, body)
         seen = seen + 1
         if body ~= nil and string.find(body, '"cached":true', 1, true) then
            hits = hits + 1
         end
      end
   end
end

function request()
   next_index = next_index % count + 1
   return prepared[next_index]
end

function done(summary, latency, requests)
   local hits, seen = 0, 0
   for _, thread in ipairs(threads) do
      hits = hits + (thread:get("hits") or 0)
      seen = seen + (thread:get("seen") or 0)
   end
   if seen > 0 then
      io.write(string.format("tailor-cached %d %d\n", hits, seen))
   end
end
