-- Records a compensation of the built-in demo saga once: sets the marker keyed by the
-- compensation's idempotency key and appends its task type to the saga's log list, both
-- only when the marker was not set yet, so a redelivered compensation records nothing twice.
-- KEYS[1] marker, KEYS[2] log list; ARGV[1] entry to append, ARGV[2] marker TTL in seconds.
-- Returns 1 when recorded, 0 when it had been recorded already.
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
