--[[ renew.lua: extend leases still held under a claim token.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
ARGV[1] claim token
ARGV[2] lease_ms from now
ARGV[3..] contact ids
KEYS[9] (optional) the CRM model's in-flight zset: the claim's member moves too
A half-open probe's deadline moves with its lease. Returns how many were renewed.
]]
local now = now_ms()
local token = ARGV[1]
local deadline = now + tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV do
  if owned(ARGV[i], token) then
    redis.call('ZADD', KEYS[2], 'XX', deadline, ARGV[i])
    n = n + 1
  end
end
if redis.call('HGET', KEYS[7], 'br_probe_token') == token
    and redis.call('HGET', KEYS[7], 'br_state') == 'half_open' then
  redis.call('HSET', KEYS[7], 'br_probe_until', deadline)
end
if KEYS[9] ~= nil then
  local m = crm_member(KEYS[9], token)
  if m ~= nil then redis.call('ZADD', KEYS[9], 'XX', deadline, m) end
end
return n
