-- Per-key concurrency limits (src/keylimit.rs explains the design). Every key of one call
-- is under the queue partition's hash tag (the per-scope keys are built from ARGV[2]).
--
-- A scope (a group key, or a type's group key) holds leases in the hash ts:{q}:lease:<scope>
-- whose fields are "<stream> <entry id>" of the tasks that run (or were let in and have not
-- been read yet). A lease is alive while its entry is still in its stream: every settlement
-- deletes the entry, so a lease whose entry is gone (a crash between the ACK and the release,
-- a poison dead letter, an operator's XDEL) is pruned, never leaked. Tasks over the cap wait
-- in the list ts:{q}:parked:<scope> (task JSON, as in the scheduled set, plus "stream"), and
-- ts:{q}:keyed holds the scopes with parked tasks (score: the cap), for the sweep. Pruning
-- (an XRANGE per lease) runs only for a scope at its cap, at most once a second
-- (ts:{q}:pruned:<scope>).
--
-- ARGV[1] mode, ARGV[2] key prefix "ts:{tag}:", ARGV[3] now (ms)
-- admit:   KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] starts hash;
--          ARGV[4] scope, ARGV[5] cap, ARGV[6] group, ARGV[7] entry id, ARGV[8] task JSON
--          returns 1: run it (lease held), 0: parked (entry acknowledged and deleted),
--          2: the entry is no longer pending for the group (leave it)
-- release: KEYS[1] dead-letter stream; ARGV[4] scope, ARGV[5] cap, ARGV[6] lease field
--          returns the number of parked tasks moved back to their streams
-- sweep:   KEYS[1] dead-letter stream; ARGV[4] most scopes to visit
--          returns the number of parked tasks moved back to their streams
local mode, prefix, now = ARGV[1], ARGV[2], ARGV[3]
local keyed = prefix .. 'keyed'

local function alive(field)
  local sp = string.find(field, ' ', 1, true)
  if not sp then return false end
  local id = string.sub(field, sp + 1)
  return #redis.call('XRANGE', string.sub(field, 1, sp - 1), id, id) > 0
end

-- At most once a second per scope (a cap can be large; the marker key expires by itself).
local function prune(scope)
  if not redis.call('SET', prefix .. 'pruned:' .. scope, '1', 'PX', 1000, 'NX') then return end
  local lease = prefix .. 'lease:' .. scope
  for _, f in ipairs(redis.call('HKEYS', lease)) do
    if not alive(f) then redis.call('HDEL', lease, f) end
  end
end

-- Moves parked tasks of `scope` back into their streams while it has room, each with its
-- lease taken at once (so a newcomer cannot take the place, and the order is kept).
local function promote(scope, cap, dlq)
  local lease, parked = prefix .. 'lease:' .. scope, prefix .. 'parked:' .. scope
  if redis.call('LLEN', parked) == 0 then
    redis.call('ZREM', keyed, scope)
    return 0
  end
  if redis.call('HLEN', lease) >= cap then prune(scope) end
  local moved = 0
  while redis.call('HLEN', lease) < cap do
    local m = redis.call('LPOP', parked)
    if not m then break end
    local ok, t = pcall(cjson.decode, m)
    local args = {}
    if ok and type(t) == 'table' and type(t['stream']) == 'string' then
      for k, v in pairs(t) do
        if k ~= 'stream' and type(k) == 'string' and type(v) == 'string' then
          args[#args + 1] = k
          args[#args + 1] = v
        end
      end
    end
    if #args > 0 then
      local id = redis.call('XADD', t['stream'], '*', unpack(args))
      redis.call('HSET', lease, t['stream'] .. ' ' .. id, now)
      moved = moved + 1
    else
      redis.call('XADD', dlq, '*', 'dlq_reason', 'malformed: parked entry is not a JSON object of string fields', 'dlq_raw', m, 'dlq_at', now)
    end
  end
  if redis.call('LLEN', parked) == 0 then redis.call('ZREM', keyed, scope) end
  return moved
end

if mode == 'admit' then
  local stream, scope, cap = KEYS[1], ARGV[4], tonumber(ARGV[5])
  local lease, parked = prefix .. 'lease:' .. scope, prefix .. 'parked:' .. scope
  local field = stream .. ' ' .. ARGV[7]
  if redis.call('HEXISTS', lease, field) == 1 then return 1 end
  if redis.call('LLEN', parked) == 0 then
    if redis.call('HLEN', lease) >= cap then prune(scope) end
    if redis.call('HLEN', lease) < cap then
      redis.call('HSET', lease, field, now)
      return 1
    end
  end
  -- Over the cap (or others of the scope wait already): park it at the back of the line.
  if redis.call('XACK', stream, ARGV[6], ARGV[7]) == 0 then return 2 end
  redis.call('XDEL', stream, ARGV[7])
  redis.call('HDEL', KEYS[3], ARGV[7])
  redis.call('RPUSH', parked, ARGV[8])
  redis.call('ZADD', keyed, cap, scope)
  promote(scope, cap, KEYS[2])
  return 0
elseif mode == 'release' then
  local scope = ARGV[4]
  redis.call('HDEL', prefix .. 'lease:' .. scope, ARGV[6])
  return promote(scope, tonumber(ARGV[5]), KEYS[1])
elseif mode == 'sweep' then
  local moved = 0
  local picked = redis.call('ZRANDMEMBER', keyed, tonumber(ARGV[4]), 'WITHSCORES')
  for i = 1, #picked, 2 do
    moved = moved + promote(picked[i], tonumber(picked[i + 1]), KEYS[1])
  end
  return moved
end
return redis.error_reply('keylimit.lua: unknown mode ' .. tostring(mode))
