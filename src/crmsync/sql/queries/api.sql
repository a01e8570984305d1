-- Queries of the HTTP API (crmsync.api). A contact is (tenant, id): every
-- lookup names both.

-- name: api_upsert_contacts
-- One set-based statement for a whole batch (crmsync_upsert_contacts, migration
-- 0007). Returns every input contact with `changed`; unchanged rows come from
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
FROM unnest($1::text[], $2::text[]) AS i (id, tenant)
JOIN contacts c ON c.tenant = i.tenant AND c.id = i.id
WHERE NOT EXISTS (SELECT 1 FROM up WHERE up.tenant = c.tenant AND up.id = c.id)

-- name: api_get_contact
SELECT id, tenant, email, first_name, last_name, company, status, version, updated_at, deleted_at
FROM contacts WHERE tenant = $1 AND id = $2

-- name: api_contact_sync_state
-- The ledger rows of the tenant's connections only.
SELECT s.connection_id, s.status, s.external_id, s.synced_version, s.attempts, s.last_error,
       s.rule, s.updated_at
FROM sync_state s
JOIN connections k ON k.id = s.connection_id
WHERE k.tenant = $1 AND s.contact_id = $2
ORDER BY s.connection_id

-- name: api_soft_delete_contact
-- Soft delete: the trigger captures it as a delete. Deleting an already
-- deleted contact changes nothing (changed = false); an unknown id returns no row.
WITH d AS (
    UPDATE contacts SET deleted_at = now()
    WHERE tenant = $1 AND id = $2 AND deleted_at IS NULL
    RETURNING id, tenant, email, first_name, last_name, company, status, version, updated_at, deleted_at
)
SELECT d.*, true AS changed FROM d
UNION ALL
SELECT id, tenant, email, first_name, last_name, company, status, version, updated_at, deleted_at,
       false AS changed
FROM contacts WHERE tenant = $1 AND id = $2 AND NOT EXISTS (SELECT 1 FROM d)

-- name: api_status_connections
-- Per-connection ledger counts by status, open dead letters and heals after a
-- Redis loss ($1 NULL: every tenant).
SELECT c.id, c.tenant, c.crm, c.paused_reason,
       COALESCE(s.counts, '{}'::jsonb) AS sync,
       COALESCE(d.n, 0) AS dead_letters,
       COALESCE(r.heals, 0) AS redis_heals, r.healed_at
FROM connections c
LEFT JOIN redis_state r ON r.connection_id = c.id
LEFT JOIN (
    SELECT connection_id, jsonb_object_agg(status, n) AS counts
    FROM (SELECT connection_id, status, count(*) AS n FROM sync_state GROUP BY 1, 2) x
    GROUP BY connection_id
) s ON s.connection_id = c.id
LEFT JOIN (
    SELECT connection_id, count(*) AS n FROM dead_letters WHERE resolved_at IS NULL GROUP BY 1
) d ON d.connection_id = c.id
WHERE $1::text IS NULL OR c.tenant = $1
ORDER BY c.id

-- name: api_status_tenants
-- Per tenant ($1 NULL: every one): live and deleted contacts, outbox rows not
-- yet relayed, open dead letters of its connections.
WITH c AS (
    SELECT tenant,
           count(*) FILTER (WHERE deleted_at IS NULL) AS contacts,
           count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted_contacts
    FROM contacts WHERE $1::text IS NULL OR tenant = $1 GROUP BY tenant
), o AS (
    SELECT tenant, count(*) AS outbox
    FROM outbox WHERE $1::text IS NULL OR tenant = $1 GROUP BY tenant
), d AS (
    SELECT k.tenant, count(*) AS dead_letters
    FROM dead_letters x JOIN connections k ON k.id = x.connection_id
    WHERE x.resolved_at IS NULL AND ($1::text IS NULL OR k.tenant = $1) GROUP BY k.tenant
), t AS (
    SELECT tenant FROM c UNION SELECT tenant FROM o UNION SELECT tenant FROM d
    UNION SELECT tenant FROM connections WHERE $1::text IS NULL OR tenant = $1
)
SELECT t.tenant,
       COALESCE(c.contacts, 0) AS contacts,
       COALESCE(c.deleted_contacts, 0) AS deleted_contacts,
       COALESCE(o.outbox, 0) AS outbox,
       COALESCE(d.dead_letters, 0) AS dead_letters
FROM t
LEFT JOIN c ON c.tenant = t.tenant
LEFT JOIN o ON o.tenant = t.tenant
LEFT JOIN d ON d.tenant = t.tenant
ORDER BY t.tenant
