-- Queries of the operator endpoints (crmsync.api.ops). $tenant NULL: every tenant.

-- name: ops_connection_tenant
SELECT tenant FROM connections WHERE id = $1

-- name: ops_connections
SELECT id, tenant, crm, rate_limits FROM connections ORDER BY id

-- name: ops_contact_lookup
-- By id or by email (case-insensitive, contacts_email_lower_idx); $2 tenant or NULL.
SELECT id, tenant, email, first_name, last_name, company, status, version, updated_at, deleted_at
FROM contacts
WHERE (id = $1 OR lower(email) = lower($1))
  AND ($2::text IS NULL OR tenant = $2)
ORDER BY id
LIMIT $3

-- name: ops_contact_ledger
-- Every connection of the contact's tenant (a row without ledger: nothing synced
-- yet). A contact is (tenant, id): another tenant's ledger rows of the same id are
-- another contact's.
SELECT k.id AS connection_id, k.crm, s.status, s.external_id, s.synced_version, s.attempts,
       s.last_error, s.rule, s.updated_at
FROM connections k
LEFT JOIN sync_state s ON s.connection_id = k.id AND s.contact_id = $1
WHERE k.tenant = $2
ORDER BY k.id

-- name: ops_contact_dead_letters
SELECT d.id, d.connection_id, d.version, d.operation, d.error_code, d.error, d.http_status,
       d.attempts, d.created_at, d.resolved_at
FROM dead_letters d
JOIN connections k ON k.id = d.connection_id
WHERE d.contact_id = $1 AND k.tenant = $2  -- the contact's tenant: (tenant, id)
ORDER BY d.id
