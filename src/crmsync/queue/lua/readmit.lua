--[[ readmit.lua: swap a claim's unsent permits for permits taken now.
The claim's admission happened before its database read; when that read was
slow, sending now would put the requests later than the limiter counted them,
so they could bunch with the next admissions at the CRM. Giving the old
permits back and taking new ones at Redis TIME keeps the limiter's view equal
to the send times. Both steps are atomic here, so the limit is never exceeded.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
KEYS[9..]  one hash per rate window, in the order of the window triples below
ARGV[1] permits of the claim to give back
ARGV[2] admitted_ms of the claim (their bucket)
ARGV[3] permits wanted now
ARGV[4] the CRM model's spec ('' = none; _lib.lua): its budget admits too
ARGV[5..] per window: limit, window_ms, span_ms
ARGV[last] lineage the state hash must carry ('' = no check, '*' = any marker),
           as claim.lua checks it: without it Redis lost the windows, and
           taking from them before the heal fills them would exceed the limit.
Returns {granted, admitted_ms}; {0, now} when the lineage does not match.
]]
local now = now_ms()
local give = tonumber(ARGV[1])
local admitted = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local n = #KEYS - 8
local lineage = ARGV[5 + n * 3] or ''
if lineage ~= '' then
  local marker = marker_of(KEYS[7])
  if not marker or (lineage ~= '*' and marker ~= lineage) then return {0, now} end
end
for i = 1, n do
  local a = 5 + (i - 1) * 3
  win_refund(KEYS[8 + i], tonumber(ARGV[a + 1]), admitted, give)
end
local room = want
local crm = crm_parse(ARGV[4])
local scale = 1
if crm ~= nil then
  crm_refund(admitted, give)
  crm_load(crm, now, nil) -- the in-flight cap counts claims, which this one is already
  -- A rolling budget still counts what was given back (bud_seq only grows); one
  -- not learnt yet admits its probe here too (onboarding's first request).
  local back = 0
  if crm.kind == 'r' then back = give end
  room = math.min(room, math.max(0, crm.room + back))
  scale = crm.scale
end
local wins = {}
for i = 1, n do
  local a = 5 + (i - 1) * 3
  local limit = tonumber(ARGV[a])
  if scale ~= 1 then limit = math.max(1, math.floor(limit * scale)) end
  local w = win_load(KEYS[8 + i], limit, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), now)
  wins[i] = w
  room = math.min(room, win_room(w))
end
if room < 0 then room = 0 end
for _, w in ipairs(wins) do win_take(w, room, now) end
if crm ~= nil then crm_take(crm, room, nil, 0, nil) end
stat('readmitted', room)
if room < want then stat('readmit_short', want - room) end
return {room, now}
