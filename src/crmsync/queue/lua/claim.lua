--[[ claim.lua: lease work of one connection if it may send now.
KEYS[1..8] the connection's queue keys (layout in _lib.lua)
KEYS[9..]  one hash per rate window, in the order of the window triples below
ARGV[1] claim token (random, chosen by the caller)
ARGV[2] max_requests the caller can send now
ARGV[3] batch_size: ids per request
ARGV[4] lease_ms; also how long a half-open probe may take to report
ARGV[5] breaker threshold (consecutive failures that open the circuit)
ARGV[6] breaker recovery ms (open -> half-open)
ARGV[7] limits spec "limit:window_ms,..." (restores a flushed state hash)
ARGV[8] paused reason of the caller's config, '' = none (restore only)
ARGV[9] margin (restore only)
ARGV[10] back-dating allowed, ms (at most KEEP_MS): a claim that comes later than
         its room opened (a late wake-up, a busy loop) is stamped when the room
         opened, at most this long ago, instead of losing that time for good
ARGV[11] lineage the caller expects in the state hash: '' = no check, '*' = any
         marker, else that run id. No marker, or one written on another cluster
         node: Redis lost the connection's state (flush, restart, failover):
         refused 'lost', nothing written. Another
         marker: refused 'lineage' (healed by someone else, or an older Redis).
ARGV[12] the CRM model's spec ('' = windows only; format in _lib.lua, crm_parse)
ARGV[13..] per window: limit, window_ms, span_ms (window stretched by the margin),
           min_room (permits to wait for before the next claim, at most what
           this claim asked for: the next one is likely to ask as much)
KEYS[9 + windows] the in-flight zset, when the spec has a cap
Returns {refused ('' = granted), next_eligible_ms (-1 = only on wake-up),
         admitted_ms (the permits' stamp), permits, probe (0/1), Redis time ms,
         our admissions before this claim (bud_seq; 0 without a CRM model),
         id1, score1, id2, score2, ...}; a score starts with '?' when the id's
         last lease expired unresolved (its send's outcome is unknown)
Refusals: paused, blocked, circuit_open, empty, rate_limited (a window), budget
(the CRM model's daily budget), concurrency (its in-flight cap).
]]
local now = now_ms()
local token = ARGV[1]
local max_requests = tonumber(ARGV[2])
local batch = tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4])
local threshold = tonumber(ARGV[5])
local recovery = tonumber(ARGV[6])

local lineage = ARGV[11]
if lineage ~= '' then
  local marker = marker_of(KEYS[7])
  if not marker then return {'lost', -1, now, 0, 0, now, 0} end
  if lineage ~= '*' and marker ~= lineage then return {'lineage', -1, now, 0, 0, now, 0} end
end

-- Redis is a cache: after a FLUSHALL the caller's config restores the state.
if redis.call('HEXISTS', KEYS[7], 'limits') == 0 then
  redis.call('HSET', KEYS[7], 'limits', ARGV[7], 'br_threshold', threshold,
    'br_recovery_ms', recovery, 'margin', ARGV[9])
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[7], 'paused', ARGV[8]) end
end

local nwin = math.floor((#ARGV - 12) / 4)
local crm = crm_parse(ARGV[12])
local conc_key = nil
if crm ~= nil and crm.cap > 0 then conc_key = KEYS[9 + nwin] end

local function refuse(reason, next_ms)
  stat('refused_' .. reason, 1)
  return {reason, next_ms or -1, now, 0, 0, now, crm and crm.seq or 0}
end

local function later_work()
  local d = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  local l = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return min_score(tonumber(d[2]), tonumber(l[2]))
end

local st = redis.call('HMGET', KEYS[7], 'paused', 'blocked_until_ms')
if st[1] then return refuse('paused', nil) end
local blocked = tonumber(st[2])
if blocked ~= nil and blocked > now then return refuse('blocked', blocked) end

local br = br_read(KEYS[7])
local verdict, br_next = br_allow(br, now, recovery, lease_ms)
if verdict == 'refuse' then return refuse('circuit_open', br_next) end

local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[4], id)
  back_to_ready(id, now)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  drop_lease(id)
  back_to_ready(id, now)
  mark_unknown(id)
end
stat('leases_expired', #expired)

local ready_n = redis.call('ZCARD', KEYS[1])
if ready_n == 0 then return refuse('empty', later_work()) end
if verdict == 'probe' then
  max_requests = 1
  batch = 1
end
local room = math.min(max_requests, math.ceil(ready_n / batch))

-- After a CRM's 429 (block.lua) every limit is lowered for a while: to
-- slow_factor of itself at once, growing back linearly over slow_ms.
local share = 1
local sl = redis.call('HMGET', KEYS[7], 'slow_until_ms', 'slow_ms', 'slow_factor')
local slow_until = tonumber(sl[1])
if slow_until ~= nil and slow_until > now then
  local f = tonumber(sl[3]) or 1
  share = f + (1 - f) * (1 - (slow_until - now) / math.max(1, tonumber(sl[2]) or 1))
end

if crm ~= nil then
  crm_load(crm, now, conc_key)
  if crm.room <= 0 then return refuse('budget', crm.next) end
  room = math.min(room, crm.room)
  if crm.cap > 0 then
    if crm.busy >= crm.cap then
      -- Freed by an acknowledgement (which wakes everyone) or a lease expiring.
      local first = redis.call('ZRANGE', conc_key, 0, 0, 'WITHSCORES')
      return refuse('concurrency', tonumber(first[2]) or -1)
    end
    room = math.min(room, crm.cap - crm.busy)
  end
  share = share * crm.scale
end

local wins = {}
for i = 1, nwin do
  local a = 13 + (i - 1) * 4
  local limit = tonumber(ARGV[a])
  if share ~= 1 then limit = math.max(1, math.floor(limit * share)) end
  local w = win_load(KEYS[8 + i], limit, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), now)
  w.min_room = tonumber(ARGV[a + 3])
  wins[i] = w
  room = math.min(room, win_room(w))
end

local function room_returns()
  local t = now
  for _, w in ipairs(wins) do t = math.max(t, win_next(w, now, math.min(w.min_room, max_requests))) end
  return t
end

if room <= 0 then return refuse('rate_limited', room_returns()) end

local popped = redis.call('ZPOPMIN', KEYS[1], room * batch)
local marks = (tonumber(redis.call('HGET', KEYS[7], 'unknown')) or 0) > 0
local out = {'', -1, now, 0, 0, now, 0}
local deadline = now + lease_ms
for i = 1, #popped, 2 do
  local id = popped[i]
  redis.call('ZADD', KEYS[2], deadline, id)
  redis.call('HSET', KEYS[3], id, token)
  redis.call('HSET', KEYS[6], id, popped[i + 1])
  out[#out + 1] = id
  if marks and redis.call('HEXISTS', KEYS[6], '?' .. id) == 1 then
    out[#out + 1] = '?' .. popped[i + 1]
  else
    out[#out + 1] = popped[i + 1]
  end
end
local permits = math.ceil((#popped / 2) / batch)
local stamp = now
local back = math.min(tonumber(ARGV[10]) or 0, KEEP_MS)
if back > 0 and #wins > 0 then
  -- Never before a CRM's block ended: what it refused must not count as sent then.
  local t0 = math.max(now - back, blocked or 0)
  stamp = t0
  for _, w in ipairs(wins) do stamp = math.max(stamp, win_since(w, t0, permits)) end
  if stamp < now then
    stat('backdated', 1)
    stat('backdated_ms', now - stamp)
  end
end
for _, w in ipairs(wins) do win_take(w, permits, stamp) end
if crm ~= nil then
  out[7] = crm.seq
  crm_take(crm, permits, token, deadline, conc_key)
end
out[3] = stamp
out[4] = permits
stat('claims', 1)
stat('admitted', permits)
stat('leased', #popped / 2)

if verdict == 'probe' then
  br_write(KEYS[7], br)
  redis.call('HSET', KEYS[7], 'br_probe_token', token)
  out[5] = 1
  stat('probes', 1)
  -- Everyone else waits for the probe's report (which wakes them) or its time-out.
  out[2] = br.probe_until
elseif redis.call('ZCARD', KEYS[1]) > 0 then
  out[2] = room_returns()
else
  out[2] = later_work() or -1
end
return out
