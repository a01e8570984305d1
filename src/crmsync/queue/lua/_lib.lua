--[[ _lib.lua: helpers shared by every crmsync script (not a script itself).

crmsync.queue.scripts prepends this file to each script before SCRIPT LOAD, so
the breaker table and the window arithmetic exist once. Queue scripts share one
KEYS layout, so the helpers below may name them:
  KEYS[1] ready        zset  id -> band * 1e13 + enqueue ms
  KEYS[2] leases       zset  id -> lease deadline ms
  KEYS[3] lease_tokens hash  id -> claim token
  KEYS[4] delayed      zset  id -> due ms
  KEYS[5] requeue      zset  id -> ready score (enqueued again while leased)
  KEYS[6] bands        hash  id -> ready score of a leased or delayed id;
                             '?' .. id -> 1 while an id's expired lease is unresolved
  KEYS[7] state        hash  paused, blocked_until_ms, limits, br_* fields, lineage,
                             node (the cluster node id the marker was written on, '-': one server),
                             unknown (how many '?' marks KEYS[6] holds)
  KEYS[8] stats        hash  counters for `crmsync status`
  KEYS[9..] one rate-window hash per configured window (claim, ack, depth)
The CRM breaker script uses only the br_* helpers on its own key.
]]

local BAND = 10000000000000 -- 1e13: a band outranks any enqueue time in ms

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Which node holds a connection's state: a Redis Cluster node's id, '-' on one
-- server (where CLUSTER is refused).
local function this_node()
  local r = redis.pcall('CLUSTER', 'MYID')
  if type(r) == 'string' then return r end
  return '-'
end

-- The state's lineage marker, or false when Redis lost it: no marker, or one
-- stamped on another cluster node. A connection's slot that moved to another
-- node (a failover, whose replica may lack the last writes, or a resharding)
-- counts as lost; so does one server whose marker came from a cluster node.
local function marker_of(state)
  local m = redis.call('HMGET', state, 'lineage', 'node')
  if not m[1] then return false end
  if m[2] and m[2] ~= '-' and m[2] ~= this_node() then return false end
  return m[1]
end

-- Mark the state with ``lineage``, stamped with the node that holds it.
local function mark(state, lineage)
  redis.call('HSET', state, 'lineage', lineage, 'node', this_node())
end

local function min_score(a, b)
  if a == nil then return b end
  if b == nil then return a end
  if b < a then return b end
  return a
end

-- Queue helpers ---------------------------------------------------------------

local function owned(id, token)
  return redis.call('HGET', KEYS[3], id) == token
end

-- The best (lowest) known ready score of a leased or delayed id, merging a
-- pending requeue entry, which is consumed. Unknown ids default to UPDATE now.
local function pending_score(id, now)
  local s = tonumber(redis.call('HGET', KEYS[6], id))
  local rq = tonumber(redis.call('ZSCORE', KEYS[5], id))
  if rq ~= nil then
    redis.call('ZREM', KEYS[5], id)
  end
  return min_score(s, rq) or (BAND + now)
end

local function drop_lease(id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end

-- Leased or delayed id back to ready with its band and age; returns 1 if added.
local function back_to_ready(id, now)
  local s = pending_score(id, now)
  redis.call('HDEL', KEYS[6], id)
  return redis.call('ZADD', KEYS[1], 'LT', s, id)
end

-- An id whose lease expired: its worker may have died after the CRM applied
-- its send and before the ledger row was written. Marked until acknowledged,
-- so the claims that take it tell their worker (claim.lua).
-- The state hash's 'unknown' counts the marks, so claims look for them only
-- when there are any.
local function mark_unknown(id)
  if redis.call('HSETNX', KEYS[6], '?' .. id, 1) == 1 then
    redis.call('HINCRBY', KEYS[7], 'unknown', 1)
  end
end

-- Finished lease: a change that arrived meanwhile becomes ready work.
local function finish_lease(id)
  drop_lease(id)
  redis.call('HDEL', KEYS[6], id)
  if redis.call('HDEL', KEYS[6], '?' .. id) == 1 then
    redis.call('HINCRBY', KEYS[7], 'unknown', -1)
  end
  local rq = tonumber(redis.call('ZSCORE', KEYS[5], id))
  if rq ~= nil then
    redis.call('ZREM', KEYS[5], id)
    return redis.call('ZADD', KEYS[1], 'LT', rq, id)
  end
  return 0
end

local function stat(field, n)
  if n ~= 0 then redis.call('HINCRBY', KEYS[8], field, n) end
end

-- Sliding window in buckets ---------------------------------------------------
-- Bucket width g = window_ms // 250. At time t the count is the sum of buckets
-- with index >= floor((t - span) / g), span = window stretched by the margin:
-- every admission inside (t - span, t] is counted, so no sliding span ever
-- holds more than the limit (at most one bucket is counted too long).
-- A late claim may be stamped up to KEEP_MS in the past (claim.lua, win_since),
-- so buckets that left the span less than KEEP_MS ago stay in the hash; the
-- 'total' field sums every bucket kept, w.total only those counted now.

local KEEP_MS = 32

local function win_width(window_ms)
  return math.max(1, math.floor(window_ms / 250))
end

-- Expires old buckets; returns the window's live view: w.total is the count at
-- now, w.back the kept buckets that left the span ({idx, count}, oldest first).
local function win_load(key, limit, window_ms, span, now)
  local g = win_width(window_ms)
  local f = math.floor((now - span) / g)
  local keep = math.floor((now - span - KEEP_MS) / g)
  local v = redis.call('HMGET', key, 'total', 'lo')
  local total = tonumber(v[1]) or 0
  local lo = tonumber(v[2])
  if lo == nil or keep - lo > 2 * (span / g) + 8 then
    if lo ~= nil then redis.call('DEL', key) end
    total = 0
    redis.call('HSET', key, 'lo', keep, 'total', 0)
    redis.call('PEXPIRE', key, span + KEEP_MS + 2 * g + 1000)
  elseif lo < keep then
    -- Walk the buckets that exist (about one per claim in the span), not every
    -- bucket index since the last load: fine buckets would cost hundreds of HGETs.
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do
      local idx = tonumber(all[i]) -- nil for the 'lo' and 'total' fields
      if idx ~= nil and idx < keep then
        total = total - tonumber(all[i + 1])
        redis.call('HDEL', key, all[i])
      end
    end
    if total < 0 then total = 0 end
    redis.call('HSET', key, 'lo', keep, 'total', total)
  end
  local back = {}
  if f > keep then
    local idxs = {}
    for idx = keep, f - 1 do idxs[#idxs + 1] = idx end
    local counts = redis.call('HMGET', key, unpack(idxs))
    for j = 1, #idxs do
      local c = tonumber(counts[j])
      if c ~= nil and c > 0 then
        back[#back + 1] = {idxs[j], c}
        total = total - c
      end
    end
    if total < 0 then total = 0 end
  end
  return {key = key, limit = limit, g = g, f = f, span = span, total = total, back = back}
end

local function win_room(w)
  return w.limit - w.total
end

local function win_take(w, k, now)
  if k <= 0 then return end
  redis.call('HINCRBY', w.key, math.floor(now / w.g), k)
  redis.call('HINCRBY', w.key, 'total', k)
  w.total = w.total + k
  redis.call('PEXPIRE', w.key, w.span + KEEP_MS + 2 * w.g + 1000)
end

-- Gives back n permits taken at admitted_ms (never below zero, never an
-- expired bucket).
local function win_refund(key, window_ms, admitted_ms, n)
  local g = win_width(window_ms)
  local idx = math.floor(admitted_ms / g)
  local lo = tonumber(redis.call('HGET', key, 'lo'))
  if lo == nil or idx < lo then return end
  local c = tonumber(redis.call('HGET', key, idx))
  if c == nil then return end
  local dec = math.min(c, n)
  if dec == c then
    redis.call('HDEL', key, idx)
  else
    redis.call('HINCRBY', key, idx, -dec)
  end
  local total = tonumber(redis.call('HGET', key, 'total')) or 0
  redis.call('HSET', key, 'total', math.max(0, total - dec))
end

-- Earliest time at which the window has room for m more requests: walk the
-- live buckets oldest first until enough of them will have left the span.
local function win_next(w, now, m)
  local excess = w.total - (w.limit - math.min(m or 1, w.limit))
  if excess <= 0 then return now end
  local all = redis.call('HGETALL', w.key)
  local idxs, counts = {}, {}
  for i = 1, #all, 2 do
    local idx = tonumber(all[i])
    if idx ~= nil and idx >= w.f then
      idxs[#idxs + 1] = idx
      counts[idx] = tonumber(all[i + 1])
    end
  end
  table.sort(idxs)
  local freed = 0
  for _, idx in ipairs(idxs) do
    freed = freed + counts[idx]
    if freed >= excess then return (idx + 1) * w.g + w.span end
  end
  return math.floor(now / w.g) * w.g + w.g + w.span
end

-- Earliest time t >= t0 at which k more requests fit: counted at t are the
-- admissions in (t - span, now]. Only for k that fit at now (the claim checked
-- its room), and t0 no earlier than KEEP_MS before now. A claim stamped at t
-- puts its requests into every span that holds t, and each of those spans holds
-- no more than what was counted here: so a late claim may be stamped when its
-- room opened, not when it came, without any span holding more than the limit.
local function win_since(w, t0, k)
  local first = math.floor((t0 - w.span) / w.g)
  local c = w.total
  for _, b in ipairs(w.back) do
    if b[1] >= first then c = c + b[2] end
  end
  if c + k <= w.limit then return t0 end
  for _, b in ipairs(w.back) do
    if b[1] >= first then
      c = c - b[2]
      if c + k <= w.limit then return math.max(t0, (b[1] + 1) * w.g + w.span) end
    end
  end
  return math.max(t0, w.f * w.g + w.span)
end

-- Circuit breaker (the table of crmsync.breaker.transition) -------------------
-- br = {state = closed|open|half_open, failures, opened, probe_until}

local function br_read(key)
  local v = redis.call('HMGET', key, 'br_state', 'br_failures', 'br_opened_ms', 'br_probe_until')
  return {
    state = v[1] or 'closed',
    failures = tonumber(v[2]) or 0,
    opened = tonumber(v[3]) or 0,
    probe_until = tonumber(v[4]) or 0,
  }
end

local function br_write(key, br)
  redis.call('HSET', key, 'br_state', br.state, 'br_failures', br.failures,
    'br_opened_ms', br.opened, 'br_probe_until', br.probe_until)
end

-- Event "allow": returns 'allow' | 'probe' | 'refuse' and, when refused, the
-- time to ask again. Mutates br only when it grants the probe.
local function br_allow(br, now, recovery_ms, probe_ms)
  if br.state == 'closed' then return 'allow', nil end
  if br.state == 'open' then
    if now < br.opened + recovery_ms then return 'refuse', br.opened + recovery_ms end
  elseif now < br.probe_until then
    return 'refuse', br.probe_until
  end
  -- Open and recovered, or half-open with the probe's time run out.
  br.state = 'half_open'
  br.probe_until = now + probe_ms
  return 'probe', nil
end

-- Events "success" / "failure"; returns true when this event opened the circuit.
local function br_record(br, ok, now, threshold)
  if br.state == 'closed' then
    if ok then
      br.failures = 0
      return false
    end
    br.failures = br.failures + 1
    if br.failures < threshold then return false end
  elseif br.state == 'half_open' then
    if ok then
      br.state = 'closed'
      br.failures = 0
      br.probe_until = 0
      return false
    end
  else
    return false -- open: late outcomes change nothing
  end
  br.state = 'open'
  br.opened = now
  br.probe_until = 0
  return true
end

-- The CRMs' own limit models (crmsync/crm_limits.py) --------------------------
-- spec: '' (windows only) or 'cap;kind;alloc;reserve;base;recheck_ms;guard_ms;b0;b1;b2;b3'
-- kind 'r' (Salesforce): a rolling day's budget learnt as used/max: used now is
--   bud_used + our admissions since the request it answered (bud_seq - bud_ref).
-- kind 'd' (HubSpot): a fixed day from the portal's midnight (b0..b3: midnights
--   around now, the day starting guard_ms after one): our admissions in it
--   (day_n) plus the other apps' use learnt in it (day_others).
-- Both keep reserve (a share) of the budget unused. cap > 0: at most cap requests
-- in flight across every worker, one member 'token|n' per claim in a zset
-- scored by its lease deadline (ack and expiry free them).
-- State fields (KEYS[7]): bud_seq (our admissions ever), bud_max (learnt budget),
-- bud_used, bud_ref, bud_probe_ms, day_start, day_n, day_others, day_ref (bud_seq
-- when the day began), burst (a learnt 10-second limit).

local DAY_UNKNOWN_MS = 60000 -- a healed portal day probes for at most this long
local DAY_PROBE_MS = 1000 -- one probe this often while it does

local function crm_parse(spec)
  if spec == nil or spec == '' then return nil end
  local v = {}
  for x in string.gmatch(spec, '[^;]+') do v[#v + 1] = x end
  local c = {cap = tonumber(v[1]), kind = v[2], alloc = tonumber(v[3]),
    reserve = tonumber(v[4]), base = tonumber(v[5]), recheck = tonumber(v[6]),
    guard = tonumber(v[7]), bounds = {}}
  for i = 8, #v do c.bounds[#c.bounds + 1] = tonumber(v[i]) end
  return c
end

-- The portal day holding now: its start (a midnight) and when the next one is
-- used; nil when the worker's bounds do not hold now (its clock is far off).
local function crm_day(c, now)
  for i = 1, #c.bounds - 1 do
    if c.bounds[i] + c.guard <= now and now < c.bounds[i + 1] + c.guard then
      return c.bounds[i], c.bounds[i + 1] + c.guard
    end
  end
  return nil, nil
end

-- Requests in flight under the cap (expired claims dropped).
local function crm_busy(conc_key, now)
  redis.call('ZREMRANGEBYSCORE', conc_key, '-inf', now)
  local busy = 0
  for _, m in ipairs(redis.call('ZRANGE', conc_key, 0, -1)) do
    busy = busy + (tonumber(string.match(m, '|(%d+)$')) or 0)
  end
  return busy
end

-- Loads the model at now: c.room (requests the budget admits now; a budget not
-- learnt yet admits one probe per recheck), c.next (when it may admit again),
-- c.scale (a learnt limit over the one the windows were computed from), c.busy.
local function crm_load(c, now, conc_key)
  local f = redis.call('HMGET', KEYS[7], 'bud_seq', 'bud_max', 'bud_used', 'bud_ref',
    'bud_probe_ms', 'day_start', 'day_n', 'day_others', 'burst', 'day_unknown')
  c.seq = tonumber(f[1]) or 0
  c.most = tonumber(f[2]) or c.alloc
  local limit = c.most - math.ceil(c.most * c.reserve)
  -- Requests admitted before an answered one may reach the CRM after it (counted
  -- neither in its used nor since): at most the in-flight cap, kept back too.
  if c.kind == 'r' then limit = math.min(limit, c.most - c.cap) end
  c.scale = 1
  c.next = now + c.recheck
  if c.kind == 'r' then
    c.scale = c.most / c.base
    local used = tonumber(f[3])
    c.learnt = used ~= nil
    if used == nil then
      c.used = 0
      c.room = 0
      local probe = tonumber(f[5])
      if probe == nil or probe <= now then
        c.room = 1
        c.probe = true
      end
    else
      c.used = used + (c.seq - (tonumber(f[4]) or c.seq))
      c.room = limit - c.used
    end
  else
    local start, nxt = crm_day(c, now)
    local cur = tonumber(f[6])
    local n, others = tonumber(f[7]) or 0, tonumber(f[8]) or 0
    if start == nil then
      start = cur or now
    elseif cur == nil or start > cur then
      redis.call('HSET', KEYS[7], 'day_start', start, 'day_n', 0, 'day_others', 0,
        'day_ref', c.seq)
      n, others = 0, 0
    end
    if nxt ~= nil then c.next = nxt end
    c.day_start = start
    c.used = n + others
    c.room = limit - c.used
    local burst = tonumber(f[9])
    if burst ~= nil and burst > 0 then c.scale = burst / c.base end
    -- After a Redis loss (heal.lua) the day's count restarted: until an answer
    -- tells the day's use again (learn.lua), or DAY_UNKNOWN_MS passed (a portal
    -- whose answers carry no daily headers), one probe at a time.
    local unknown = tonumber(f[10])
    if unknown ~= nil and unknown > now and c.room > 0 then
      local probe = tonumber(f[5])
      c.next = now + DAY_PROBE_MS
      if probe == nil or probe <= now then
        c.room = 1
        c.probe = true
      else
        c.room = 0
        c.next = probe
      end
    end
  end
  c.busy = 0
  if c.cap > 0 and conc_key ~= nil then c.busy = crm_busy(conc_key, now) end
  return c
end

-- k requests admitted now under claim token (deadline: its lease).
local function crm_take(c, k, token, deadline, conc_key)
  if k <= 0 then return end
  redis.call('HINCRBY', KEYS[7], 'bud_seq', k)
  if c.kind == 'd' then redis.call('HINCRBY', KEYS[7], 'day_n', k) end
  if c.probe then redis.call('HSET', KEYS[7], 'bud_probe_ms', c.next) end
  if c.cap > 0 and conc_key ~= nil and token ~= nil then
    redis.call('ZADD', conc_key, deadline, token .. '|' .. k)
    redis.call('PEXPIRE', conc_key, math.max(1000, deadline - now_ms() + 1000))
  end
end

-- n permits admitted at admitted_ms given back: they leave the portal day's
-- count (a rolling budget keeps them: its next learning corrects it).
local function crm_refund(admitted_ms, n)
  if n <= 0 then return end
  local v = redis.call('HMGET', KEYS[7], 'day_start', 'day_n')
  local start, dn = tonumber(v[1]), tonumber(v[2])
  if start ~= nil and dn ~= nil and admitted_ms >= start then
    redis.call('HSET', KEYS[7], 'day_n', math.max(0, dn - n))
  end
end

-- The claim's member of the in-flight zset, or nil.
local function crm_member(conc_key, token)
  for _, m in ipairs(redis.call('ZRANGE', conc_key, 0, -1)) do
    if string.sub(m, 1, #token + 1) == token .. '|' then return m end
  end
  return nil
end
