-- Scans a stream in id order from ARGV[1] to ARGV[2] (XRANGE bounds), at most ARGV[3]
-- entries, and returns the entries that match every criterion — so a search of a large
-- dead-letter stream or a lookup by task id never sends the entries that do not match
-- over the wire, and the caller's memory stays bounded by the matches (issue 12).
-- KEYS[1] stream
-- ARGV[1] start, ARGV[2] end, ARGV[3] entries to scan (the caller keeps it small, so one
-- call holds Redis for a bounded time), ARGV[4] matches to return at most,
-- ARGV[5] values longer than this many bytes are cut to it (-1: never; 0: return no
-- fields, ids only), then criteria as triples (op, field, value):
--   'eq'  field equals value;
--   'has' field contains value, ignoring ASCII case (value given lowercased).
-- Returns {last id scanned or '', entries scanned, id1, fields1, id2, fields2, ...}; a
-- cut value ends with '…' (UTF-8 bytes e2 80 a6) after the cut.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local want = tonumber(ARGV[4])
local cut = tonumber(ARGV[5])
local out = {'', 0}
local found = 0
for n = 1, #entries do
  local id, f = entries[n][1], entries[n][2]
  out[1] = id
  out[2] = n
  local ok = true
  local i = 6
  while ok and ARGV[i] do
    local op, name, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local got = nil
    for j = 1, #f, 2 do
      if f[j] == name then got = f[j + 1]; break end
    end
    if got == nil then
      ok = false
    elseif op == 'eq' then
      ok = (got == value)
    else
      ok = (string.find(string.lower(got), value, 1, true) ~= nil)
    end
    i = i + 3
  end
  if ok then
    out[#out + 1] = id
    if cut == 0 then
      out[#out + 1] = {}
    elseif cut > 0 then
      local g = {}
      for j = 1, #f, 2 do
        g[#g + 1] = f[j]
        local v = f[j + 1]
        if #v > cut then v = string.sub(v, 1, cut) .. '\226\128\166' end
        g[#g + 1] = v
      end
      out[#out + 1] = g
    else
      out[#out + 1] = f
    end
    found = found + 1
    if found >= want then break end
  end
end
return out
