-- Settles one delivery in one atomic step: acknowledge it, delete the entry (unless other
-- groups still need it), and do what the outcome needs: schedule the retry, add the
-- dead letter, post the reply. Idempotent: if the entry is no longer pending for the
-- group (an earlier call went through but its reply was lost), nothing is done again.
-- KEYS[1] stream, KEYS[2] scheduled set, KEYS[3] dead-letter stream, KEYS[4] reply stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] '1' to XDEL the entry, ARGV[4] action
--   ('ok' | 'retry' | 'dead' | 'move' | 'skip'; 'move' re-adds the entry to KEYS[3],
--   which is then the target stream, e.g. the pool that serves the task's type), ARGV[5] retry due ms, ARGV[6] retry member,
-- ARGV[7] number N of dead-letter args, then N args (field/value pairs),
-- then the number M of reply args, then M args. M = 0: no reply.
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 0 then return 0 end
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
local action = ARGV[4]
local nd = tonumber(ARGV[7])
if action == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
elseif (action == 'dead' or action == 'move') and nd > 0 then
  redis.call('XADD', KEYS[3], '*', unpack(ARGV, 8, 7 + nd))
end
local nr = tonumber(ARGV[8 + nd])
if nr > 0 then
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, 9 + nd, 8 + nd + nr))
end
return 1
