--[[ breaker.lua: the per-CRM circuit breaker shared by every worker.
KEYS[1] the CRM's breaker hash (br_* fields, br_trips counter)
ARGV[1] operation: 'allow' or 'record'
ARGV[2] threshold (consecutive failures that open the circuit)
ARGV[3] recovery ms (open -> half-open)
ARGV[4] probe ms: how long the single half-open probe may take to report
ARGV[5] now ms for tests with a fake clock; '' = Redis TIME (always in service)
ARGV[6] outcomes for 'record': one character per request, '1' ok, '0' failure
Returns for 'allow': 'allow' | 'probe' | 'refuse'; for 'record': the state after.
]]
local now = tonumber(ARGV[5]) or now_ms()
local br = br_read(KEYS[1])
if ARGV[1] == 'allow' then
  local verdict = br_allow(br, now, tonumber(ARGV[3]), tonumber(ARGV[4]))
  if verdict == 'probe' then br_write(KEYS[1], br) end
  return verdict
end
if br.state == 'open' then return br.state end
for i = 1, #ARGV[6] do
  if br_record(br, string.sub(ARGV[6], i, i) == '1', now, tonumber(ARGV[2])) then
    redis.call('HINCRBY', KEYS[1], 'br_trips', 1)
    break
  end
  if br.state ~= 'closed' then break end
end
br_write(KEYS[1], br)
return br.state
