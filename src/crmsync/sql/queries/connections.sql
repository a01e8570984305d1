-- Connection CRUD (crmsync.connections). Each write notifies
-- crmsync_connections with the id in the same statement; NOTIFY is delivered
-- at commit, so workers never see a change that was rolled back.

-- name: connections_add
WITH ins AS (
    INSERT INTO connections (id, tenant, crm, account, base_url, token, rate_limits, settings)
    VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb)
    RETURNING id
)
SELECT pg_notify('crmsync_connections', id) FROM ins

-- name: connections_list
SELECT id, tenant, crm, account, base_url, token, rate_limits, settings, paused_reason, created_at
FROM connections ORDER BY id

-- name: connections_remove
WITH del AS (DELETE FROM connections WHERE id = $1 RETURNING id)
SELECT id, pg_notify('crmsync_connections', id) FROM del

-- name: connections_set_paused
-- $2 NULL resumes the connection.
WITH upd AS (UPDATE connections SET paused_reason = $2 WHERE id = $1 RETURNING id)
SELECT id, pg_notify('crmsync_connections', id) FROM upd
