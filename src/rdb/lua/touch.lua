-- Keeps the entries a live worker is running fresh: XCLAIM to itself with JUSTID resets the
-- idle time without counting a delivery. Only entries still owned by the caller are
-- touched, so a worker never takes back an entry that recovery already moved.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids
-- Returns the number of entries refreshed.
local mine = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then mine[#mine + 1] = ARGV[i] end
end
if #mine == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(mine))
return #mine
