--[[ snapshot.lua: a connection's lineage marker and the buckets of some of its
rate windows, for the PostgreSQL checkpoint a heal refills them from.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
KEYS[9..]  the window hashes to copy
Returns {lineage ('' = none, or stamped on another cluster node), Redis time
ms, flat bucket list of each window}.
]]
local marker = marker_of(KEYS[7]) or ''
local out = {marker, now_ms()}
for i = 9, #KEYS do
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
end
return out
