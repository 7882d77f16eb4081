-- Claims the pending entries of a consumer whose heartbeat has lapsed, in one step, so two
-- recoverers never both take the same entry. An entry whose executions (1 for its first
-- delivery, plus the starts recorded for recovered runs in KEYS[4]) reached max_deliveries
-- is poison: moved to the dead-letter stream instead of being claimed again. Counting
-- started executions, not deliveries, keeps tasks that were merely claimed alongside a
-- poison task (and never ran) from being called poison themselves.
-- KEYS[1] stream, KEYS[2] heartbeats set, KEYS[3] dead-letter stream, KEYS[4] starts hash
-- ARGV[1] group, ARGV[2] dead consumer, ARGV[3] claiming consumer, ARGV[4] heartbeat
-- cutoff ms (the owner is dead if its last beat is older), ARGV[5] most entries,
-- ARGV[6] max deliveries, ARGV[7] now ms, ARGV[8] '1' to XDEL poison entries
-- Returns {claimed entries as {id, {fields}}, poison count, deleted-meanwhile count, last beat,
-- flat list of id, delivery count after this claim}.
local beat = redis.call('ZSCORE', KEYS[2], ARGV[2])
if beat and tonumber(beat) >= tonumber(ARGV[4]) then return {{}, 0, 0, beat, {}} end
local pend = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[5]), ARGV[2])
local claim_ids = {}
local counts = {}
local poison, gone = 0, 0
local maxd = tonumber(ARGV[6])
for _, p in ipairs(pend) do
  local id, deliveries = p[1], tonumber(p[4])
  local runs = 1 + tonumber(redis.call('HGET', KEYS[4], id) or '0')
  if runs >= maxd then
    local e = redis.call('XRANGE', KEYS[1], id, id)
    redis.call('XACK', KEYS[1], ARGV[1], id)
    if e[1] then
      local f = e[1][2]
      f[#f + 1] = 'dlq_reason'; f[#f + 1] = 'poison: delivered ' .. runs .. ' times without completion'
      f[#f + 1] = 'dlq_attempts'; f[#f + 1] = tostring(runs)
      f[#f + 1] = 'dlq_at'; f[#f + 1] = ARGV[7]
      f[#f + 1] = 'dlq_entry_id'; f[#f + 1] = id
      f[#f + 1] = 'dlq_consumer'; f[#f + 1] = ARGV[2]
      redis.call('XADD', KEYS[3], '*', unpack(f))
      if ARGV[8] == '1' then redis.call('XDEL', KEYS[1], id) end
      poison = poison + 1
      redis.call('HDEL', KEYS[4], id)
    else
      gone = gone + 1
      redis.call('HDEL', KEYS[4], id)
    end
  else
    claim_ids[#claim_ids + 1] = id
    counts[#counts + 1] = id
    counts[#counts + 1] = deliveries + 1
  end
end
local claimed = {}
if #claim_ids > 0 then
  claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, unpack(claim_ids))
  -- XCLAIM drops ids whose entry was deleted (Redis 7 also removes them from the PEL);
  -- their start marks go with them (issue 10.5), or they would stay forever.
  local live = {}
  local nlive = 0
  for _, e in ipairs(claimed) do
    if e and e[2] then live[e[1]] = true; nlive = nlive + 1 end
  end
  gone = gone + (#claim_ids - nlive)
  for _, id in ipairs(claim_ids) do
    if not live[id] then redis.call('HDEL', KEYS[4], id) end
  end
end
return {claimed, poison, gone, beat or '0', counts}
