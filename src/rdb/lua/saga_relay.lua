-- Relays one dispatch of a saga transition from its bucket's outbox to the queue stream
-- it was decided for (Redis Cluster only; on one server the transition adds it itself):
-- adds the task unless the marker of its correlation says a relay already did, so the
-- relays of two orchestrators (or of a starter and an orchestrator) add it once.
-- KEYS[1] destination stream, KEYS[2] marker (on the stream's slot);
-- ARGV[1] marker TTL ms, ARGV[2..] the task's field/value pairs.
-- Returns 1 when added, 0 when it had been relayed already.
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
  return 1
end
return 0
