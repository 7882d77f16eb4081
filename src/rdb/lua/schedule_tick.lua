-- Claim one tick of a schedule and, unless it is only skipped, add its task: one step,
-- so however many schedulers race for a tick exactly one enqueues it, and a crash cannot
-- leave a claimed tick without its task or a task whose tick another scheduler fires again.
-- KEYS[1] the schedule's state hash (ts:{q}:schedule:<name>), KEYS[2] the lane stream
-- ARGV[1] tick ms, ARGV[2] now ms, ARGV[3] missed ticks skipped before this one,
-- ARGV[4] 'x' (fire: ARGV[5] task id, ARGV[6..] field/value pairs) or 's' (skip only),
-- A tick fired more than 1000 ms after its instant counts as late.
-- Returns {0, last} already claimed, {1, entry id} fired, {2} claimed while paused,
-- {3} skipped.
local tick = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '-1')
if tick <= last then return {0, tostring(last)} end
redis.call('HSET', KEYS[1], 'last', ARGV[1])
local skipped = tonumber(ARGV[3])
if skipped > 0 then redis.call('HINCRBY', KEYS[1], 'skipped', skipped) end
if redis.call('HGET', KEYS[1], 'paused') == '1' then
  redis.call('HINCRBY', KEYS[1], 'paused_ticks', 1)
  return {2}
end
if ARGV[4] == 's' then
  redis.call('HINCRBY', KEYS[1], 'skipped', 1)
  return {3}
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
redis.call('HSET', KEYS[1], 'last_task', ARGV[5], 'last_fired_ms', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'fired', 1)
if tonumber(ARGV[2]) - tick > 1000 then redis.call('HINCRBY', KEYS[1], 'late', 1) end
return {1, id}
