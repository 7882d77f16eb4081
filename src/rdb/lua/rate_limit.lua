-- GCRA rate limiter (generic cell rate algorithm) shared by every replica: one key per
-- task type holds the theoretical arrival time (TAT) in microseconds of server time.
-- KEYS[1] limiter key; ARGV[1] emission interval in µs (1e6 / rate), ARGV[2] burst
-- Returns 0 when the task may start now, else the µs to wait before asking again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat - burst * interval
if now < allow_at then return allow_at - now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
