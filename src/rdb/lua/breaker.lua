-- A circuit breaker shared by every replica (src/breaker.rs explains the design): one hash
-- per downstream target, ts:breaker:{<target>}, every transition one atomic call.
--
-- Fields: state ('closed' | 'open' | 'half_open'), until (ms: end of the open period),
-- probes (probe runs under way in half-open), probe_until (ms: after it a probe that never
-- reported, its worker killed, is forgotten), ok (successful probes in a row), and the
-- window ring n<i> / f<i> / t<i> (calls, failures and the second bucket i holds,
-- i = second mod window). Returns {state, until, opened (1 when this call opened it)}.
--
-- KEYS[1] the breaker's hash
-- ARGV[1] mode: 'allow' (may a task run now?) | 'record' (a run's outcome)
-- ARGV[2] now ms, ARGV[3] window s, ARGV[4] min calls, ARGV[5] failure ratio,
-- ARGV[6] open ms, ARGV[7] successful probes that close it, ARGV[8] probe time limit ms
-- record: ARGV[9] outcome 'ok' | 'fail' | 'none' (ran, says nothing of the target),
--         ARGV[10] '1' when the run was a probe
-- allow returns state 'closed' (run), 'probe' (run as the one probe), 'open' (hold until
-- `until`) or 'half_open' (a probe is under way: hold until `until`).
local k = KEYS[1]
local mode, now = ARGV[1], tonumber(ARGV[2])
local window, min_calls, ratio = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local open_ms, close_after, probe_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local ttl = math.max(open_ms, window * 1000) * 10 + 60000

local state = redis.call('HGET', k, 'state') or 'closed'
local function num(f) return tonumber(redis.call('HGET', k, f) or '0') end

local function clear_window()
  for i = 0, window - 1 do redis.call('HDEL', k, 'n' .. i, 'f' .. i, 't' .. i) end
end

local function open()
  local until_ms = now + open_ms
  redis.call('HSET', k, 'state', 'open', 'until', until_ms, 'probes', 0, 'ok', 0)
  clear_window()
  redis.call('PEXPIRE', k, ttl)
  return {'open', until_ms, 1}
end

if mode == 'allow' then
  if state == 'closed' then return {'closed', 0, 0} end
  if state == 'open' then
    local until_ms = num('until')
    if now < until_ms then return {'open', until_ms, 0} end
    redis.call('HSET', k, 'state', 'half_open', 'probes', 0, 'ok', 0)
    state = 'half_open'
  end
  -- half_open: one probe at a time; a probe silent past its time limit is forgotten.
  if num('probes') > 0 and now < num('probe_until') then
    return {'half_open', now + math.min(1000, open_ms), 0}
  end
  redis.call('HSET', k, 'probes', 1, 'probe_until', now + probe_ms)
  redis.call('PEXPIRE', k, ttl)
  return {'probe', 0, 0}
end

if mode == 'record' then
  local outcome, probe = ARGV[9], ARGV[10] == '1'
  if probe then redis.call('HSET', k, 'probes', 0) end
  if state == 'half_open' then
    if not probe then return {state, 0, 0} end
    if outcome == 'fail' then return open() end
    if outcome == 'ok' then
      local ok = redis.call('HINCRBY', k, 'ok', 1)
      if ok >= close_after then
        redis.call('HSET', k, 'state', 'closed', 'ok', 0)
        clear_window()
        return {'closed', 0, 0}
      end
    end
    return {'half_open', 0, 0}
  end
  if state == 'open' then return {'open', num('until'), 0} end
  -- closed: count the outcome in its second's bucket, then judge the window.
  if outcome == 'none' then return {'closed', 0, 0} end
  local sec = math.floor(now / 1000)
  local i = sec % window
  if num('t' .. i) ~= sec then
    redis.call('HSET', k, 'n' .. i, 0, 'f' .. i, 0, 't' .. i, sec)
  end
  redis.call('HINCRBY', k, 'n' .. i, 1)
  if outcome == 'fail' then redis.call('HINCRBY', k, 'f' .. i, 1) end
  redis.call('PEXPIRE', k, ttl)
  local calls, fails = 0, 0
  for j = 0, window - 1 do
    if sec - num('t' .. j) < window then
      calls = calls + num('n' .. j)
      fails = fails + num('f' .. j)
    end
  end
  if calls >= min_calls and fails >= ratio * calls then return open() end
  return {'closed', 0, 0}
end
return redis.error_reply('breaker.lua: unknown mode ' .. tostring(mode))
