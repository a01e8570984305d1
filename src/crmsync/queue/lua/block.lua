--[[ block.lua: hold a connection back for every worker (learned from a 429 or quota header).
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
ARGV[1] block for this many ms from now; an existing later block is kept
Returns blocked_until_ms.
]]
local until_ms = now_ms() + math.max(0, math.floor(tonumber(ARGV[1])))
local cur = tonumber(redis.call('HGET', KEYS[7], 'blocked_until_ms'))
if cur == nil or cur < until_ms then
  redis.call('HSET', KEYS[7], 'blocked_until_ms', until_ms)
else
  until_ms = cur
end
stat('rate_limited_waits', 1)
return until_ms
