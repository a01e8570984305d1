--[[ heal.lua: refill a connection's rate windows after a Redis loss and mark
its state with a new lineage, in one step (claims are refused until then).
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
KEYS[9..]  one hash per rate window, in the order of the window triples below
ARGV[1] the new lineage (run id)
ARGV[2..] per window: window_ms, span_ms, fill (permits counted as taken now),
          buckets "index:count,..." restored from the PostgreSQL checkpoint
Each window is rebuilt from scratch: the buckets given that are still kept,
plus ``fill`` at Redis time now. Returns Redis time ms.
]]
local now = now_ms()
for i = 1, #KEYS - 8 do
  local a = 2 + (i - 1) * 4
  local key = KEYS[8 + i]
  local window_ms = tonumber(ARGV[a])
  local span = tonumber(ARGV[a + 1])
  local fill = tonumber(ARGV[a + 2])
  redis.call('DEL', key)
  local w = win_load(key, 0, window_ms, span, now)
  local keep = math.floor((now - span - KEEP_MS) / w.g)
  local total = 0
  for idx, c in string.gmatch(ARGV[a + 3], '(-?%d+):(%d+)') do
    local n = tonumber(c)
    if tonumber(idx) >= keep and n > 0 then
      redis.call('HINCRBY', key, idx, n)
      total = total + n
    end
  end
  redis.call('HSET', key, 'total', total)
  w.total = total
  win_take(w, fill, now)
end
mark(KEYS[7], ARGV[1])
-- A CRM model's portal day (kind 'd') counted again from zero: probe until an
-- answer tells the day's use (_lib.lua crm_load, learn.lua).
redis.call('HSET', KEYS[7], 'day_unknown', now + DAY_UNKNOWN_MS)
stat('heals', 1)
return now
