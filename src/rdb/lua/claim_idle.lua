-- Safety net for owners that never heartbeat (or hang without dying): claims entries idle
-- longer than min_idle with XAUTOCLAIM, one page per call. Entries whose executions (see
-- claim_dead.lua) reached max_deliveries are poison and go to the dead-letter stream.
-- KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] starts hash
-- ARGV[1] group, ARGV[2] claiming consumer, ARGV[3] min idle ms, ARGV[4] cursor,
-- ARGV[5] page size, ARGV[6] max deliveries, ARGV[7] now ms, ARGV[8] '1' to XDEL poison
-- Returns {next cursor, claimed entries, poison count, deleted-meanwhile count,
-- flat list of id, delivery count}.
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', tonumber(ARGV[5]))
local cursor, claimed, deleted = r[1], r[2], r[3] or {}
local keep, counts, poison = {}, {}, 0
-- Entries deleted while pending left the PEL; their start marks go too (issue 10.5).
for _, id in ipairs(deleted) do redis.call('HDEL', KEYS[3], id) end
local maxd = tonumber(ARGV[6])
for _, e in ipairs(claimed) do
  local id = e[1]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local n = 1
  if p[1] then n = tonumber(p[1][4]) end
  local runs = 1 + tonumber(redis.call('HGET', KEYS[3], id) or '0')
  if runs >= maxd and e[2] then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    local f = e[2]
    f[#f + 1] = 'dlq_reason'; f[#f + 1] = 'poison: delivered ' .. runs .. ' times without completion'
    f[#f + 1] = 'dlq_attempts'; f[#f + 1] = tostring(runs)
    f[#f + 1] = 'dlq_at'; f[#f + 1] = ARGV[7]
    f[#f + 1] = 'dlq_entry_id'; f[#f + 1] = id
    redis.call('XADD', KEYS[2], '*', unpack(f))
    if ARGV[8] == '1' then redis.call('XDEL', KEYS[1], id) end
    poison = poison + 1
    redis.call('HDEL', KEYS[3], id)
  else
    keep[#keep + 1] = e
    counts[#counts + 1] = id
    counts[#counts + 1] = n
  end
end
return {cursor, keep, poison, #deleted, counts}
