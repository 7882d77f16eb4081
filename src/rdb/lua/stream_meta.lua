-- Facts about stream KEYS[1] without any entry's fields: { id of its oldest entry (false
-- when empty or missing), entries-added (0 when missing, or before Redis 7) }.
--
-- Why a script: `XRANGE - + COUNT 1` sends the oldest entry whole and `XINFO STREAM` sends
-- the first and the last. The worker's periodic samplers (collector, SLA loop) asked every
-- few seconds, and a large entry at the head of a lane grew the shared connection's read
-- buffer to its size, which a connection keeps for as long as it lives (a raw producer's
-- 10 MiB payloads kept 16 MiB resident; issue 10, item 12). Here only ids and numbers
-- cross the wire.
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local added = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then
      added = info[i + 1]
    end
  end
end
return { first[1] and first[1][1] or false, added }
