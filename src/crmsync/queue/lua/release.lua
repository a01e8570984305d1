--[[ release.lua: put leased ids back into ready with their band and age.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
ARGV[1] claim token; only ids still leased under it go back
ARGV[2..] contact ids
Returns how many ids went back.
]]
local now = now_ms()
local token = ARGV[1]
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if owned(id, token) then
    drop_lease(id)
    back_to_ready(id, now)
    n = n + 1
  end
end
stat('released', n)
return n
