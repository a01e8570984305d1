--[[ restamp.lua: move sent permits from their admission to Redis TIME now.
A request admitted at admitted_ms whose bytes left the worker later (a busy
event loop, a descheduled process) reaches the CRM later than the limiter
counted it; once its old bucket left the span the limiter would admit another
request that the CRM still counts together with it. Moving the permit to the
write time keeps the limiter's view equal to the arrivals. The move never
needs room: every admission since admitted_ms was counted with this permit in
the same span, so no span holds more than the limit after it.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
KEYS[9..]  one hash per rate window, in the order of the window pairs below
ARGV[1] permits to move
ARGV[2] admitted_ms they were taken at (their bucket)
ARGV[3..] per window: window_ms, span_ms
Returns Redis TIME in ms (the new stamp).
]]
local now = now_ms()
local n = tonumber(ARGV[1])
local admitted = tonumber(ARGV[2])
for i = 1, #KEYS - 8 do
  local a = 3 + (i - 1) * 2
  local window_ms, span = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  win_refund(KEYS[8 + i], window_ms, admitted, n)
  win_take({key = KEYS[8 + i], g = win_width(window_ms), span = span, total = 0}, n, now)
end
stat('restamped', n)
return now
