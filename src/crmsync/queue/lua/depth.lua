--[[ depth.lua: one connection's queue sizes, state and counters, read at once.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
KEYS[9..]  one hash per rate window the caller wants counted
Returns {ready, leased, delayed, requeue, Redis time ms, state hash as a flat
         list, stats hash as a flat list, then each window's hash as a flat list}.
A script rather than MULTI: on a Redis Cluster a transaction cannot hold TIME,
and the time must be the clock of the node that serves the connection's slot.
]]
local out = {
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[4]),
  redis.call('ZCARD', KEYS[5]),
  now_ms(),
  redis.call('HGETALL', KEYS[7]),
  redis.call('HGETALL', KEYS[8]),
}
for i = 9, #KEYS do out[#out + 1] = redis.call('HGETALL', KEYS[i]) end
return out
