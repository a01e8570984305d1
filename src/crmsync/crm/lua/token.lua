-- The end of one token refresh of a connection (crmsync.crm.tokens.SharedToken):
-- publish its outcome for every process and let go of the refresh lock.
--
-- KEYS[1] auth hash: sealed (the access token, its instance URL and refresh token,
--         sealed by crmsync.vault), rev (the credentials it came from), gen (bumped
--         by every published token), issued_ms, expires_ms (0: unknown), cause
--         ("401": refreshed because the CRM refused the previous token), ok (a
--         fingerprint of the token once a request succeeded with it), fails,
--         failed, failed_code, failed_status, failed_rev, failed_ms (the last refusal)
-- KEYS[2] refresh lock: the refresher's random value while it calls the endpoint
-- KEYS[3] stats hash of the connection: token_refreshes counts published tokens
-- ARGV[1] mode: "ok" (a new token), "fail" (the endpoint refused), "release" (neither)
-- ARGV[2] the lock value this refresher set
-- ok:   ARGV[3] sealed  ARGV[4] rev  ARGV[5] issued ms  ARGV[6] expires ms  ARGV[7] cause
-- fail: ARGV[3] reason  ARGV[4] rev  ARGV[5] code  ARGV[6] HTTP status  ARGV[7] when (ms)
-- Returns the new gen (ok), the refusal count (fail), or 0 (release).
--
-- A token is published even when the lock expired under a slow refresher: the
-- endpoint may have rotated the refresh token, and the newest one must not be lost.
local out = 0
if ARGV[1] == 'ok' then
  redis.call('HSET', KEYS[1], 'sealed', ARGV[3], 'rev', ARGV[4], 'issued_ms', ARGV[5],
             'expires_ms', ARGV[6], 'cause', ARGV[7])
  redis.call('HDEL', KEYS[1], 'ok')
  out = redis.call('HINCRBY', KEYS[1], 'gen', 1)
  redis.call('HINCRBY', KEYS[3], 'token_refreshes', 1)
elseif ARGV[1] == 'fail' then
  redis.call('HSET', KEYS[1], 'failed', ARGV[3], 'failed_rev', ARGV[4], 'failed_code', ARGV[5],
             'failed_status', ARGV[6], 'failed_ms', ARGV[7])
  out = redis.call('HINCRBY', KEYS[1], 'fails', 1)
end
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return out
