--[[ retry.lua: move leased ids to delayed until their retry is due.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
ARGV[1] claim token; only ids still leased under it move
ARGV[2..] pairs: contact id, delay ms
The band (and a change that arrived while leased) is kept in bands.
Returns how many ids moved.
]]
local now = now_ms()
local token = ARGV[1]
local moved = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if owned(id, token) then
    drop_lease(id)
    redis.call('HSET', KEYS[6], id, pending_score(id, now))
    redis.call('ZADD', KEYS[4], now + math.max(0, math.floor(tonumber(ARGV[i + 1]))), id)
    moved = moved + 1
  end
end
stat('retried_later', moved)
return moved
