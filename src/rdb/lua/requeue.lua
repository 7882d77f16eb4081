-- Moves one dead letter back into its queue with a fresh attempt count, in one step.
-- KEYS[1] dead-letter stream, KEYS[2] bulk stream, KEYS[3] express stream
-- ARGV[1] dead-letter entry id, ARGV[2] now ms
-- Returns 1 when requeued, 0 when the entry is gone, -1 when it has no task fields.
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if not e[1] then return 0 end
local f = e[1][2]
local args, lane = {}, 'bulk'
local has_type = false
for i = 1, #f, 2 do
  local k, v = f[i], f[i + 1]
  if k == 'dlq_lane' then lane = v end
  if string.sub(k, 1, 4) ~= 'dlq_' and k ~= 'attempt' and k ~= 'last_error' and k ~= 'only_group' then
    args[#args + 1] = k; args[#args + 1] = v
    if k == 'type' then has_type = true end
  end
end
if not has_type then return -1 end
args[#args + 1] = 'attempt'; args[#args + 1] = '1'
local target = KEYS[2]
if lane == 'express' then target = KEYS[3] end
redis.call('XADD', target, '*', unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
