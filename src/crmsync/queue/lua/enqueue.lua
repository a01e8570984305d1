--[[ enqueue.lua: queue contact ids of one connection, coalescing repeats.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
ARGV[1..] pairs: contact id, band (0 CREATE, 1 UPDATE, 2 DELETE)
An id already ready keeps its best band and oldest age (ZADD LT); a leased id
goes to requeue (no two workers ever hold one contact); a delayed id keeps its
due time and its best band. Returns {how many ids became new ready work,
1 if the state hash carries no lineage marker of this node (Redis lost it, or
no worker marked it yet) else 0}.
]]
local now = now_ms()
local added = 0
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  local s = tonumber(ARGV[i + 1]) * BAND + now
  if redis.call('ZSCORE', KEYS[2], id) then
    redis.call('ZADD', KEYS[5], 'LT', s, id)
  else
    local held = tonumber(redis.call('HGET', KEYS[6], id))
    if held ~= nil and redis.call('ZSCORE', KEYS[4], id) then
      if s < held then redis.call('HSET', KEYS[6], id, s) end
    else
      added = added + redis.call('ZADD', KEYS[1], 'LT', s, id)
    end
  end
end
stat('enqueued', #ARGV / 2)
return {added, marker_of(KEYS[7]) and 0 or 1}
