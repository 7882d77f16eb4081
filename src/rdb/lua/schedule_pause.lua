-- Pause or resume a schedule. Resuming claims every tick up to now, so the ticks that
-- fell while it was paused (and no scheduler consumed) are not replayed by catch_up.
-- KEYS[1] the schedule's state hash; ARGV[1] '1' pause or '0' resume, ARGV[2] now ms.
-- Returns 1 when the state changed, 0 when it already was so.
local was = redis.call('HGET', KEYS[1], 'paused') == '1'
if ARGV[1] == '1' then
  if redis.call('HGET', KEYS[1], 'since') == false then
    redis.call('HSET', KEYS[1], 'since', ARGV[2])
  end
  redis.call('HSET', KEYS[1], 'paused', '1')
  return was and 0 or 1
end
redis.call('HDEL', KEYS[1], 'paused')
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '-1')
if tonumber(ARGV[2]) > last then redis.call('HSET', KEYS[1], 'last', ARGV[2]) end
return was and 1 or 0
