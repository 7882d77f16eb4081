-- Removes a dead consumer from its group on every lane, and forgets its heartbeat, only if
-- it has no pending entry on any lane — all checked and done in one step. XGROUP
-- DELCONSUMER drops the consumer's pending entries (redis#9745), and forgetting the
-- heartbeat while one lane still holds entries would hide the consumer from fast recovery.
-- KEYS[1..n-1] the lane streams, KEYS[n] heartbeats set
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] heartbeat cutoff ms
-- Returns 1 when removed, 0 when kept (alive again or still holding entries).
local hb = KEYS[#KEYS]
local beat = redis.call('ZSCORE', hb, ARGV[2])
if beat and tonumber(beat) >= tonumber(ARGV[3]) then return 0 end
for i = 1, #KEYS - 1 do
  local pend = redis.call('XPENDING', KEYS[i], ARGV[1], '-', '+', 1, ARGV[2])
  if #pend > 0 then return 0 end
end
for i = 1, #KEYS - 1 do
  redis.call('XGROUP', 'DELCONSUMER', KEYS[i], ARGV[1], ARGV[2])
end
redis.call('ZREM', hb, ARGV[2])
return 1
