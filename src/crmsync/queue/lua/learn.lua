--[[ learn.lua: what a CRM's answer says about its daily budget, for every worker.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
ARGV[1] kind: 'r' (a rolling day: Salesforce) or 'd' (the portal's day: HubSpot)
ARGV[2] used: requests the CRM counts against the budget (every app's)
ARGV[3] max: the budget
ARGV[4] ref: our admissions (bud_seq) before the answered request was admitted:
        the CRM's count holds it and may hold none of ours admitted after;
        '' = asked now (/limits): ours now less those in flight (KEYS[9], the
        in-flight zset, when given)
ARGV[5] a 10-second limit the answer names ('' = none)
ARGV[6] the CRM model's spec (_lib.lua): a portal day that began is begun here too
Rolling: the learning of the latest request wins (used grows and falls as the
day rolls). Daily: the other apps' use in the portal's day only grows; an
answer to a request admitted before our day began says nothing about this one.
Returns 0 when it changed nothing, 1 when it changed the budget, 2 when that
gave room to a rolling budget that had none (claims were refused: wake them).
]]
local kind = ARGV[1]
local used = tonumber(ARGV[2])
local most = tonumber(ARGV[3])
local ref = tonumber(ARGV[4])
local asked = ARGV[4] == ''
if asked then
  ref = tonumber(redis.call('HGET', KEYS[7], 'bud_seq')) or 0
  if KEYS[9] ~= nil then ref = ref - crm_busy(KEYS[9], now_ms()) end
end
local burst = tonumber(ARGV[5])
if burst ~= nil and burst > 0 then redis.call('HSET', KEYS[7], 'burst', burst) end
if used == nil or most == nil or most <= 0 or ref == nil then return 0 end
redis.call('HSET', KEYS[7], 'bud_max', most)
local c = crm_parse(ARGV[6])
if c ~= nil and c.kind == 'd' then crm_load(c, now_ms(), nil) end
local f = redis.call('HMGET', KEYS[7], 'bud_seq', 'bud_ref', 'bud_used', 'day_n',
  'day_others', 'day_ref')
local seq = tonumber(f[1]) or 0
if kind == 'r' then
  local cur = tonumber(f[2])
  local function room(u, r)
    if u == nil or c == nil then return 0 end
    return most - math.ceil(most * c.reserve) - (u + seq - r)
  end
  local before = room(tonumber(f[3]), cur)
  -- Asked now: newer than any answer to a request admitted up to ref.
  if cur == nil or ref > cur or (asked and ref == cur)
      or (ref == cur and used > (tonumber(f[3]) or 0)) then
    redis.call('HSET', KEYS[7], 'bud_used', used, 'bud_ref', ref)
    stat('budget_learnt', 1)
    if before <= 0 and room(used, ref) > 0 then return 2 end
    return 1
  end
  return 0
end
local day_ref = tonumber(f[6])
if day_ref == nil or ref < day_ref then return 0 end
-- Ours in the CRM's count: at most our admissions of this day before ref.
local ours = math.max(0, (tonumber(f[4]) or 0) - (seq - ref))
local others = used - ours
if others > (tonumber(f[5]) or 0) then
  redis.call('HSET', KEYS[7], 'day_others', others)
  stat('budget_learnt', 1)
  return 1
end
return 0
