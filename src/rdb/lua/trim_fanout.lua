-- Trims a stream read by several groups behind the slowest one: no entry that some group
-- has not yet read, or still holds pending, is removed.
-- KEYS[1] stream; ARGV: the group names. Returns the number of entries trimmed.
local function lt(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local minid = nil
for i = 1, #ARGV do
  local ok, info = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
  if not ok then return 0 end
  local found = false
  for _, g in ipairs(info) do
    local name, last = nil, nil
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] end
      if g[j] == 'last-delivered-id' then last = g[j + 1] end
    end
    if name == ARGV[i] then
      found = true
      local ms, seq = string.match(last, '(%d+)-(%d+)')
      local cand = ms .. '-' .. (tonumber(seq) + 1)
      local p = redis.call('XPENDING', KEYS[1], ARGV[i])
      if p[2] and lt(p[2], cand) then cand = p[2] end
      if minid == nil or lt(cand, minid) then minid = cand end
    end
  end
  -- A group that does not exist yet has read nothing: trim nothing.
  if not found then return 0 end
end
if minid == nil then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', minid)
