--[[ ack.lua: finish leased ids and give back permits that were not used.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
KEYS[9..]  one hash per rate window, in the order of the window sizes below
ARGV[1] claim token; only ids still leased under it are finished
ARGV[2] refund: permits of the claim that were never sent
ARGV[3] admitted_ms of the claim (the bucket the permits were taken from)
ARGV[4] w: number of windows
ARGV[5..4+w] window_ms of each window
ARGV[5+w] 1 when KEYS[9+w] is the CRM model's in-flight zset (the claim's
          member leaves it), else 0
ARGV[6+w..] contact ids
Returns how many ids became ready again (they changed while leased), plus one
when the claim's in-flight requests were freed and work is waiting (a wake-up).
]]
local token = ARGV[1]
local refund = tonumber(ARGV[2])
local admitted = tonumber(ARGV[3])
local w = tonumber(ARGV[4])
if refund > 0 then
  for i = 1, w do win_refund(KEYS[8 + i], tonumber(ARGV[4 + i]), admitted, refund) end
  crm_refund(admitted, refund)
  stat('refunded', refund)
end
local again = 0
if ARGV[5 + w] == '1' then
  local m = crm_member(KEYS[9 + w], token)
  if m ~= nil then
    redis.call('ZREM', KEYS[9 + w], m)
    if redis.call('ZCARD', KEYS[1]) > 0 then again = 1 end
  end
end
local done = 0
for i = 6 + w, #ARGV do
  local id = ARGV[i]
  if owned(id, token) then
    again = again + finish_lease(id)
    done = done + 1
  end
end
stat('acked', done)
return again
