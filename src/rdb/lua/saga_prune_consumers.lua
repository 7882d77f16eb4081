-- Removes the consumers of the orchestrator group that hold no pending reply and have been
-- idle for longer than ARGV[2] ms (orchestrators that exited or were killed and whose
-- replies were already claimed by others). Checked and removed in one step, so a consumer
-- that just took a reply is never removed with it. The caller's own consumer is kept.
-- KEYS[1] reply stream; ARGV[1] group, ARGV[2] min idle ms, ARGV[3] own consumer name.
-- Returns the number of consumers removed.
local removed = 0
local min_idle = tonumber(ARGV[2])
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for k = 1, #c, 2 do
    if c[k] == 'name' then name = c[k + 1]
    elseif c[k] == 'pending' then pending = tonumber(c[k + 1])
    elseif c[k] == 'idle' then idle = tonumber(c[k + 1]) end
  end
  if name and name ~= ARGV[3] and pending == 0 and idle and idle > min_idle then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
