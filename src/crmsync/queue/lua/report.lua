--[[ report.lua: feed request outcomes of one claim to the connection's breaker.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
ARGV[1] claim token
ARGV[2] breaker threshold
ARGV[3] outcomes, one character per request: '1' success, '0' failure
In half-open only the probe's claim decides; while open nothing changes.
Returns the breaker state after the report, 'opened' when this report opened it.
]]
local now = now_ms()
local token = ARGV[1]
local threshold = tonumber(ARGV[2])
local br = br_read(KEYS[7])
if br.state == 'open' then return br.state end
if br.state == 'half_open' and redis.call('HGET', KEYS[7], 'br_probe_token') ~= token then
  return br.state
end
local opened = false
for i = 1, #ARGV[3] do
  if br_record(br, string.sub(ARGV[3], i, i) == '1', now, threshold) then
    stat('breaker_trips', 1)
    opened = true
    break
  end
  if br.state ~= 'closed' then break end
end
if br.state ~= 'half_open' then redis.call('HDEL', KEYS[7], 'br_probe_token') end
br_write(KEYS[7], br)
if opened then return 'opened' end
return br.state
