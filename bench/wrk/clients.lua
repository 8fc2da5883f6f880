-- wrk script for bench/gateway.sh: requests from many clients, each named by
-- X-Forwarded-For (the gateway trusts 127.0.0.1 as a proxy, so that header
-- is the client identity).
--
--   wrk -s bench/wrk/clients.lua URL -- CLIENTS [BLOCKED_IP]
--
-- CLIENTS distinct addresses 10.0.x.y take turns. With BLOCKED_IP, 9 of
-- every 10 requests come from BLOCKED_IP instead (the abuse run).
-- Requests are formatted once in init(), so wrk spends no time per request
-- building them. With BENCH_PACE_MS set in the environment, each connection
-- pauses that many milliseconds after every answer: a steady load below
-- saturation, for latency without queueing.

local requests = {}
local next_request = 0

function init(args)
  local clients = tonumber(args[1]) or 1000
  local blocked = args[2]
  local path = wrk.path
  for c = 0, clients - 1 do
    local ip = string.format("10.0.%d.%d", math.floor(c / 256) % 256, c % 256)
    requests[#requests + 1] = wrk.format("GET", path, { ["X-Forwarded-For"] = ip })
    if blocked then
      for _ = 1, 9 do
        requests[#requests + 1] = wrk.format("GET", path, { ["X-Forwarded-For"] = blocked })
      end
    end
  end
end

local pace = tonumber(os.getenv("BENCH_PACE_MS") or "")
if pace then
  function delay()
    return pace
  end
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
