-- Applies one saga transition atomically: compare-and-set on the saga's revision, then
-- write the new state, append the history entry, move the saga between the state indexes,
-- update its deadlines and enqueue the tasks the transition dispatches. Either all of it
-- happens or none: a crash can neither lose a transition nor dispatch a step twice.
-- KEYS[1] saga hash, KEYS[2] history list, KEYS[3] deadlines zset, KEYS[4] active zset,
-- KEYS[5] index of the old state, KEYS[6] index of the new state, KEYS[7] settings hash,
-- KEYS[8] queue registry set and KEYS[9..] the stream of each dispatched task, in order
-- (one server); on a Redis Cluster (ARGV[10] = '1') KEYS[8] is the bucket's outbox
-- stream instead and there are no more keys: every key is on the bucket's slot, and each
-- dispatch is added to the outbox with its destination ('dest', 'queue' fields first)
-- for the relay to move (saga_relay.lua).
-- ARGV[1] expected rev ('0': the saga must not exist yet), ARGV[2] new rev, ARGV[3] saga id,
-- ARGV[4] now ms, ARGV[5] default retention ms, ARGV[6] default step grace ms,
-- ARGV[7] '1' when the saga ends, ARGV[8] active-set score ('' to leave it),
-- ARGV[9] history entry, ARGV[10] '1' for the outbox, then four counted groups:
--   N, then N field/value pairs of the hash (2N args);
--   N, then N deadline members to remove;
--   N, then N deadlines to add as (score, '1' to add the step grace, member) triples;
--   N, then N dispatches, each (queue name, destination stream, M, M field/value pairs).
-- Returns {1, new rev, outbox entry ids...}, or {0, current rev ('' when the saga does
-- not exist)}.
local cur = redis.call('HGET', KEYS[1], 'rev')
if ARGV[1] == '0' then
  if cur then return {0, cur} end
elseif cur ~= ARGV[1] then
  return {0, cur or ''}
end
local now = tonumber(ARGV[4])
local outbox = ARGV[10] == '1'
local i = 11
local n = tonumber(ARGV[i])
redis.call('HSET', KEYS[1], unpack(ARGV, i + 1, i + 2 * n))
i = i + 2 * n + 1
redis.call('RPUSH', KEYS[2], ARGV[9])
n = tonumber(ARGV[i])
if n > 0 then redis.call('ZREM', KEYS[3], unpack(ARGV, i + 1, i + n)) end
i = i + n + 1
n = tonumber(ARGV[i])
if n > 0 then
  local grace = tonumber(redis.call('HGET', KEYS[7], 'step_grace_ms') or ARGV[6])
  for k = 0, n - 1 do
    local b = i + 1 + 3 * k
    local score = tonumber(ARGV[b])
    if ARGV[b + 1] == '1' then score = score + grace end
    redis.call('ZADD', KEYS[3], string.format('%d', score), ARGV[b + 2])
  end
end
i = i + 3 * n + 1
if KEYS[5] ~= KEYS[6] then
  redis.call('ZREM', KEYS[5], ARGV[3])
  redis.call('ZADD', KEYS[6], ARGV[4], ARGV[3])
end
if ARGV[8] ~= '' then redis.call('ZADD', KEYS[4], ARGV[8], ARGV[3]) end
if ARGV[7] == '1' then
  local keep = tonumber(redis.call('HGET', KEYS[7], 'retention_ms') or ARGV[5])
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], string.format('%d', keep))
  redis.call('PEXPIRE', KEYS[2], string.format('%d', keep))
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', string.format('(%d', now - keep))
end
n = tonumber(ARGV[i])
i = i + 1
local out = {1, ARGV[2]}
for d = 1, n do
  local m = tonumber(ARGV[i + 2])
  if outbox then
    out[#out + 1] = redis.call('XADD', KEYS[8], '*', 'dest', ARGV[i + 1], 'queue', ARGV[i],
      unpack(ARGV, i + 3, i + 2 + 2 * m))
  else
    redis.call('XADD', KEYS[8 + d], '*', unpack(ARGV, i + 3, i + 2 + 2 * m))
    redis.call('SADD', KEYS[8], ARGV[i])
  end
  i = i + 3 + 2 * m
end
return out
