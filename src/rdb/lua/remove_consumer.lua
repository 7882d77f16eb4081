-- Removes a dead consumer from a group only if it has no pending entries, in one step:
-- XGROUP DELCONSUMER drops the consumer's pending entries (redis#9745), so the check and
-- the delete must not be split by a claim arriving in between.
-- KEYS[1] stream, KEYS[2] heartbeats set
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] heartbeat cutoff ms, ARGV[4] '1' to also drop
-- the heartbeat (last stream of the queue)
-- Returns 1 when removed, 0 when kept (alive again or still holding entries).
local beat = redis.call('ZSCORE', KEYS[2], ARGV[2])
if beat and tonumber(beat) >= tonumber(ARGV[3]) then return 0 end
local pend = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pend > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == '1' then redis.call('ZREM', KEYS[2], ARGV[2]) end
return 1
