-- name: worker_connections
-- `secrets` is sealed: Connection.from_row opens it in memory (crmsync.vault).
SELECT id, tenant, crm, account, base_url, secrets, rate_limits, settings, paused_reason, auth
FROM connections
ORDER BY id;

-- name: worker_load
-- The current row and ledger row of every claimed id, in one statement.
-- Both lookups are LATERAL ... LIMIT 1 so they stay an index probe per id
-- whatever the planner's statistics say: bulk loads and a fast-growing ledger
-- outrun autovacuum's ANALYZE, and with stale statistics plain joins turn into
-- hash joins over whole tables, once per claim.
-- A contact is (tenant, id): ids are looked up in the connection's tenant only.
SELECT i.id,
       c.tenant, c.email, c.first_name, c.last_name, c.company, c.status, c.version,
       c.deleted_at IS NOT NULL AS deleted,
       extract(epoch FROM c.updated_at)::float8 * 1000 AS committed_ms,
       s.external_id, s.synced_version, s.status AS sync_status, s.attempts
FROM unnest($2::text[]) AS i(id)
LEFT JOIN LATERAL (
    SELECT tenant, email, first_name, last_name, company, status, version, deleted_at,
           updated_at
    FROM contacts
    WHERE tenant = (SELECT k.tenant FROM connections k WHERE k.id = $1) AND id = i.id
    LIMIT 1
) c ON true
LEFT JOIN LATERAL (
    SELECT external_id, synced_version, status, attempts
    FROM sync_state
    WHERE connection_id = $1 AND contact_id = i.id
    LIMIT 1
) s ON true;

-- name: worker_record
-- One statement per claim for every outcome. NULL external_id / synced_version
-- keep what the ledger had (a retry does not forget the CRM's record id), and a
-- late writer (lease expired, someone else synced a newer version) never rolls
-- the ledger back. A sync (or a delete) that landed resolves the contact's open
-- dead letters of this connection up to the version synced.
WITH written AS (
    INSERT INTO sync_state AS s
        (connection_id, contact_id, external_id, synced_version, status, rule, attempts, last_error, updated_at)
    SELECT $1, u.contact_id, u.external_id, u.synced_version, u.status, u.rule, u.attempts, u.last_error, now()
    FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::int[], $8::text[])
         AS u(contact_id, external_id, synced_version, status, rule, attempts, last_error)
    ON CONFLICT (connection_id, contact_id) DO UPDATE SET
        external_id = COALESCE(EXCLUDED.external_id, s.external_id),
        synced_version = COALESCE(EXCLUDED.synced_version, s.synced_version),
        status = EXCLUDED.status,
        rule = EXCLUDED.rule,
        attempts = EXCLUDED.attempts,
        last_error = EXCLUDED.last_error,
        updated_at = now()
    WHERE s.synced_version IS NULL
       OR EXCLUDED.synced_version IS NULL
       OR EXCLUDED.synced_version >= s.synced_version
    RETURNING s.contact_id, s.status, s.synced_version
)
UPDATE dead_letters d SET resolved_at = now()
FROM written w
WHERE w.status IN ('synced', 'deleted')
  AND d.connection_id = $1 AND d.contact_id = w.contact_id AND d.resolved_at IS NULL
  AND (w.status = 'deleted' OR d.version IS NULL OR d.version <= w.synced_version);

-- name: worker_dead_letters
INSERT INTO dead_letters
    (connection_id, contact_id, version, operation, error_code, error, http_status, payload, attempts)
SELECT $1, d.contact_id, d.version, d.operation, d.error_code, d.error, d.http_status, d.payload, d.attempts
FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::int[], $8::jsonb[], $9::int[])
     AS d(contact_id, version, operation, error_code, error, http_status, payload, attempts);

-- name: worker_pause_connection
-- $3: the credentials' rev the worker sent with (NULL: any). Credentials an
-- operator replaced meanwhile (`connections update`) are not paused for.
WITH p AS (
    UPDATE connections SET paused_reason = $2
    WHERE id = $1 AND paused_reason IS NULL
      AND ($3::text IS NULL OR auth->>'rev' IS NOT DISTINCT FROM $3)
    RETURNING id
)
SELECT pg_notify('crmsync_connections', id) FROM p;
