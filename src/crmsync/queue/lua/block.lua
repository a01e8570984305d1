--[[ block.lua: hold a connection back for every worker (learned from a 429 or quota header).
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
ARGV[1] block for this many ms from now; an existing later block is kept
ARGV[2] slow_ms: after a CRM's 429, claim at a lower rate for this long (0 = not)
ARGV[3] slow_factor: the share of every window's limit right after the 429; it
        grows back linearly to the whole limit over slow_ms (claim.lua)
ARGV[4] why (the CRM's words), kept with the block that wins; '' = none given
Returns blocked_until_ms.
]]
local now = now_ms()
local slow_ms = math.floor(tonumber(ARGV[2]) or 0)
if slow_ms > 0 then
  redis.call('HSET', KEYS[7], 'slow_until_ms', now + slow_ms, 'slow_ms', slow_ms,
    'slow_factor', ARGV[3])
  stat('slowdowns', 1)
end
local until_ms = now + math.max(0, math.floor(tonumber(ARGV[1])))
local cur = tonumber(redis.call('HGET', KEYS[7], 'blocked_until_ms'))
if cur == nil or cur < until_ms then
  redis.call('HSET', KEYS[7], 'blocked_until_ms', until_ms, 'blocked_reason', ARGV[4] or '')
else
  until_ms = cur
end
stat('rate_limited_waits', 1)
return until_ms
