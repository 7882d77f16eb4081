-- Moves due tasks from the scheduled set into their lane's stream (asynq's forwarder).
-- Atomic per call, so several workers may run it at once without duplicating a task.
-- KEYS[1] scheduled set, KEYS[2] bulk stream, KEYS[3] express stream, KEYS[4] dead-letter stream
-- ARGV[1] now ms, ARGV[2] most tasks to move, ARGV[3] pool stream prefix (ts:{q}:pool:);
-- a member with a "pool" field goes to that pool's stream (same hash tag).
-- Returns {moved, score of the next due task or '-1'}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local ok, t = pcall(cjson.decode, m)
  local args = {}
  if ok and type(t) == 'table' then
    for k, v in pairs(t) do
      if k ~= 'lane' and k ~= 'pool' and type(k) == 'string' and type(v) == 'string' then
        args[#args + 1] = k
        args[#args + 1] = v
      end
    end
  end
  if #args > 0 then
    local target = KEYS[2]
    if t['lane'] == 'express' then target = KEYS[3] end
    if type(t['pool']) == 'string' and t['pool'] ~= '' then
      target = ARGV[3] .. t['pool']
      if t['lane'] == 'express' then target = target .. ':express' end
    end
    redis.call('XADD', target, '*', unpack(args))
  else
    redis.call('XADD', KEYS[4], '*', 'dlq_reason', 'malformed: scheduled entry is not a JSON object of string fields', 'dlq_raw', m, 'dlq_at', ARGV[1])
  end
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local n = '-1'
if nxt[2] then n = nxt[2] end
return {#due, n}
