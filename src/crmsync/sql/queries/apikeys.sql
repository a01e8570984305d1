-- API keys (crmsync.apikeys): hashes only, never a key.

-- name: apikeys_create
INSERT INTO api_keys (id, tenant, role, hash, name)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, tenant, role, name, created_at, revoked_at, last_used_at

-- name: apikeys_list
-- $1 NULL: every tenant's (admin keys included).
SELECT id, tenant, role, name, created_at, revoked_at, last_used_at
FROM api_keys
WHERE $1::text IS NULL OR tenant = $1
ORDER BY created_at, id

-- name: apikeys_revoke
-- Revoking twice keeps the first revocation time.
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
WHERE id = $1
RETURNING id, tenant, role, name, created_at, revoked_at, last_used_at

-- name: apikeys_get_live
SELECT id, tenant, role, hash FROM api_keys WHERE id = $1 AND revoked_at IS NULL

-- name: apikeys_mark_used
UPDATE api_keys SET last_used_at = now() WHERE id = $1
