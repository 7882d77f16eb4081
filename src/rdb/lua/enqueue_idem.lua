-- Idempotent enqueue: remember the key and add the task in one step, so a crash cannot
-- leave a key without its task or a task without its key.
-- KEYS[1] idempotency key, KEYS[2] target (lane stream, or the scheduled set)
-- ARGV[1] task id, ARGV[2] window ms, ARGV[3] mode: 'x' (XADD) or 'z' (ZADD)
-- mode 'z': ARGV[4] due ms, ARGV[5] member;  mode 'x': ARGV[4..] field/value pairs
-- Returns {1, entry id or ''} when added, {0, id of the earlier task} for a duplicate.
local prev = redis.call('GET', KEYS[1])
if prev then return {0, prev} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] == 'z' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
  return {1, ''}
end
return {1, redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))}
