-- Queries of the HTTP API (crmsync.api).

-- name: api_upsert_contacts
-- One set-based statement for a whole batch (crmsync_upsert_contacts, migration
-- 0006). Returns every input contact with `changed`; unchanged rows come from
-- the statement's snapshot, which is their current state since the upsert did
-- not touch them.
WITH up AS (
    SELECT * FROM crmsync_upsert_contacts(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
)
SELECT up.id, up.tenant, up.email, up.first_name, up.last_name, up.company, up.status,
       up.version, up.updated_at, up.deleted_at, true AS changed
FROM up
UNION ALL
SELECT c.id, c.tenant, c.email, c.first_name, c.last_name, c.company, c.status,
       c.version, c.updated_at, c.deleted_at, false AS changed
FROM contacts c
WHERE c.id = ANY ($1::text[]) AND NOT EXISTS (SELECT 1 FROM up WHERE up.id = c.id)

-- name: api_get_contact
SELECT id, tenant, email, first_name, last_name, company, status, version, updated_at, deleted_at
FROM contacts WHERE id = $1

-- name: api_contact_sync_state
SELECT connection_id, status, external_id, synced_version, attempts, last_error, rule, updated_at
FROM sync_state WHERE contact_id = $1 ORDER BY connection_id

-- name: api_soft_delete_contact
-- Soft delete: the trigger captures it as a delete. Deleting an already
-- deleted contact changes nothing (changed = false); an unknown id returns no row.
WITH d AS (
    UPDATE contacts SET deleted_at = now()
    WHERE id = $1 AND deleted_at IS NULL
    RETURNING id, tenant, email, first_name, last_name, company, status, version, updated_at, deleted_at
)
SELECT d.*, true AS changed FROM d
UNION ALL
SELECT id, tenant, email, first_name, last_name, company, status, version, updated_at, deleted_at,
       false AS changed
FROM contacts WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM d)

-- name: api_status_connections
-- Per-connection ledger counts by status and dead letters (operator view).
SELECT c.id, c.tenant, c.crm, c.paused_reason,
       COALESCE(s.counts, '{}'::jsonb) AS sync,
       COALESCE(d.n, 0) AS dead_letters
FROM connections c
LEFT JOIN (
    SELECT connection_id, jsonb_object_agg(status, n) AS counts
    FROM (SELECT connection_id, status, count(*) AS n FROM sync_state GROUP BY 1, 2) x
    GROUP BY connection_id
) s ON s.connection_id = c.id
LEFT JOIN (
    SELECT connection_id, count(*) AS n FROM dead_letters GROUP BY 1
) d ON d.connection_id = c.id
ORDER BY c.id

-- name: api_status_totals
SELECT (SELECT count(*) FROM contacts WHERE deleted_at IS NULL) AS contacts,
       (SELECT count(*) FROM contacts WHERE deleted_at IS NOT NULL) AS deleted_contacts,
       (SELECT count(*) FROM outbox) AS outbox,
       (SELECT count(*) FROM dead_letters) AS dead_letters
