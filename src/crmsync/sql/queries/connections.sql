-- Connection CRUD (crmsync.connections). Each write notifies
-- crmsync_connections with the id in the same statement; NOTIFY is delivered
-- at commit, so workers never see a change that was rolled back.

-- name: connections_add
WITH ins AS (
    INSERT INTO connections
        (id, tenant, crm, account, base_url, secrets, token_hint, rate_limits, settings, auth)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10::jsonb)
    RETURNING id
)
SELECT pg_notify('crmsync_connections', id) FROM ins

-- name: connections_list
-- $1 NULL: every tenant's. Never the sealed credentials, only the token's hint.
SELECT id, tenant, crm, account, base_url, token_hint, secrets IS NOT NULL AS sealed,
       rate_limits, settings, paused_reason, created_at, auth
FROM connections
WHERE $1::text IS NULL OR tenant = $1
ORDER BY id

-- name: connections_remove
WITH del AS (DELETE FROM connections WHERE id = $1 RETURNING id)
SELECT id, pg_notify('crmsync_connections', id) FROM del

-- name: connections_set_paused
-- $2 NULL resumes the connection.
WITH upd AS (UPDATE connections SET paused_reason = $2 WHERE id = $1 RETURNING id)
SELECT id, pg_notify('crmsync_connections', id) FROM upd

-- name: connections_unsealed
-- Plaintext tokens kept from before encryption at rest (migration 0009).
SELECT connection_id, token FROM connections_unsealed_tokens ORDER BY connection_id FOR UPDATE

-- name: connections_count_unsealed
SELECT count(*) FROM connections_unsealed_tokens

-- name: connections_forget_unsealed
DELETE FROM connections_unsealed_tokens WHERE connection_id = ANY ($1::text[])

-- name: connections_sealed_for_update
-- Every sealed connection, locked until the caller's transaction ends (rotation).
SELECT id, secrets FROM connections WHERE secrets IS NOT NULL ORDER BY id FOR UPDATE

-- name: connections_set_secrets
-- Workers reload the connections whose credentials changed.
WITH upd AS (
    UPDATE connections c SET secrets = u.secrets, token_hint = u.hint
    FROM unnest($1::text[], $2::text[], $3::text[]) AS u (id, secrets, hint)
    WHERE c.id = u.id
    RETURNING c.id
)
SELECT pg_notify('crmsync_connections', id) FROM upd

-- name: connections_get
-- One connection with its sealed credentials (crmsync.connections.load).
SELECT id, tenant, crm, account, base_url, secrets, rate_limits, settings, paused_reason, auth
FROM connections WHERE id = $1

-- name: connections_get_for_update
-- The same, locked until the caller's transaction ends (update, a rotated refresh token).
SELECT id, tenant, crm, account, base_url, secrets, rate_limits, settings, paused_reason, auth
FROM connections WHERE id = $1 FOR UPDATE

-- name: connections_update
-- `connections update`: everything but id, tenant and crm; the ledger and dead
-- letters stay. $9 NULL resumes (a pause its old credentials caused).
WITH upd AS (
    UPDATE connections
    SET account = $2, base_url = $3, secrets = $4, token_hint = $5, rate_limits = $6::jsonb,
        settings = $7::jsonb, auth = $8::jsonb, paused_reason = $9
    WHERE id = $1
    RETURNING id
)
SELECT pg_notify('crmsync_connections', id) FROM upd

-- name: connections_store_rotated
-- A refresh token the CRM rotated, sealed. No NOTIFY: the workers already share it
-- through Redis and see it at their next reload.
UPDATE connections SET secrets = $2, token_hint = $3 WHERE id = $1

-- name: connections_exists
SELECT EXISTS (SELECT 1 FROM connections WHERE id = $1)
