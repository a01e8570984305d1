--[[ mark.lua: mark a connection's state with a lineage unless it has one, stamped
with the node that holds it (a connection whose Redis state was never lost).
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
ARGV[1] the lineage (run id)
Returns the marker the state carries now.
]]
local marker = redis.call('HGET', KEYS[7], 'lineage')
if marker then return marker end
mark(KEYS[7], ARGV[1])
return ARGV[1]
