-- The benchmark (crmsync_lab.bench): bulk loads and latency reads on its own database.

-- name: bench_tenant_per_connection
-- Give each listed connection a tenant of its own (its id), so each has its
-- own backlog; workers and the relay reload connections on the notification.
WITH u AS (
    UPDATE connections SET tenant = id WHERE id = ANY ($1::text[]) RETURNING id
)
SELECT pg_notify('crmsync_connections', id) FROM u

-- name: bench_insert_contacts
-- Contacts $3..$4 of tenant $1, ids "<$2>-0000001", set-based (one statement,
-- one outbox statement via the triggers). Active with a company: both CRMs'
-- rules send every one of them.
INSERT INTO contacts (id, tenant, email, first_name, last_name, company, status)
SELECT $2 || '-' || lpad(g::text, 7, '0'),
       $1,
       $2 || '.' || g || '@bench.example.com',
       'Bench',
       'Contact' || g,
       'Acme Corp',
       'active'
FROM generate_series($3::int, $4::int) AS g

-- name: bench_outbox_pending
SELECT count(*) FROM outbox

-- name: bench_synced_count
-- Ledger rows in a final state for the given connections.
SELECT count(*) FROM sync_state
WHERE connection_id = ANY ($1::text[]) AND status IN ('synced', 'skipped', 'deleted')

-- name: bench_commit_to_ack
-- Seconds from a contact's commit (updated_at) to its ledger row (the CRM's
-- acknowledgement recorded), for contacts of the given connections changed
-- at or after $2.
SELECT extract(epoch FROM s.updated_at - c.updated_at)::float8 AS seconds
FROM sync_state s
JOIN contacts c ON c.id = s.contact_id
WHERE s.connection_id = ANY ($1::text[])
  AND c.updated_at >= $2
  AND s.status = 'synced'
  AND s.synced_version = c.version

-- name: bench_now
SELECT now()
