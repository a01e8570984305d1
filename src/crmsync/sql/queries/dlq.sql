-- Dead letters (crmsync.dlq). Every query takes the same filters:
-- $1 connection id or NULL, $2 text found in the error or error code
-- (case-insensitive, no wildcards) or NULL, $3 dead-letter ids or NULL,
-- $4 tenant (letters of its connections only) or NULL, $5 which: 'open' (not
-- resolved by a later sync), 'resolved' (history) or 'all'.

-- name: dlq_list
SELECT id, connection_id, contact_id, version, operation, error_code, error, http_status,
       payload, attempts, created_at, resolved_at
FROM dead_letters
WHERE ($1::text IS NULL OR connection_id = $1)
  AND ($2::text IS NULL OR strpos(lower(error), lower($2)) > 0
       OR strpos(lower(coalesce(error_code, '')), lower($2)) > 0)
  AND ($3::bigint[] IS NULL OR id = ANY ($3))
  AND ($4::text IS NULL OR connection_id IN (SELECT id FROM connections WHERE tenant = $4))
  AND ($5::text = 'all' OR (resolved_at IS NULL) = ($5::text = 'open'))
ORDER BY id
LIMIT $6

-- name: dlq_count
SELECT count(*)
FROM dead_letters
WHERE ($1::text IS NULL OR connection_id = $1)
  AND ($2::text IS NULL OR strpos(lower(error), lower($2)) > 0
       OR strpos(lower(coalesce(error_code, '')), lower($2)) > 0)
  AND ($3::bigint[] IS NULL OR id = ANY ($3))
  AND ($4::text IS NULL OR connection_id IN (SELECT id FROM connections WHERE tenant = $4))
  AND ($5::text = 'all' OR (resolved_at IS NULL) = ($5::text = 'open'))

-- name: dlq_replay
-- Takes the matching dead letters out, gives their ledger rows a fresh attempt
-- budget, and returns each (connection, contact) once with the band it needs
-- now: gone here -> DELETE, not in the CRM -> CREATE, else UPDATE. The caller
-- enqueues before committing, so a Redis failure leaves the dead letters as
-- they were.
WITH gone AS (
    DELETE FROM dead_letters
    WHERE ($1::text IS NULL OR connection_id = $1)
      AND ($2::text IS NULL OR strpos(lower(error), lower($2)) > 0
           OR strpos(lower(coalesce(error_code, '')), lower($2)) > 0)
      AND ($3::bigint[] IS NULL OR id = ANY ($3))
      AND ($4::text IS NULL OR connection_id IN (SELECT id FROM connections WHERE tenant = $4))
      AND ($5::text = 'all' OR (resolved_at IS NULL) = ($5::text = 'open'))
    RETURNING connection_id, contact_id
),
pairs AS (
    SELECT DISTINCT connection_id, contact_id FROM gone
),
reset AS (
    UPDATE sync_state s SET status = 'retrying', attempts = 0, updated_at = now()
    FROM pairs p
    WHERE s.connection_id = p.connection_id AND s.contact_id = p.contact_id
      AND s.status = 'dead'
)
SELECT p.connection_id, p.contact_id,
       CASE
           WHEN c.id IS NULL OR c.deleted_at IS NOT NULL THEN 2
           WHEN s.external_id IS NULL OR s.status = 'deleted' THEN 0
           ELSE 1
       END AS band
FROM pairs p
JOIN connections k ON k.id = p.connection_id
LEFT JOIN contacts c ON c.tenant = k.tenant AND c.id = p.contact_id
LEFT JOIN sync_state s ON s.connection_id = p.connection_id AND s.contact_id = p.contact_id

-- name: dlq_purge
WITH gone AS (
    DELETE FROM dead_letters
    WHERE ($1::text IS NULL OR connection_id = $1)
      AND ($2::text IS NULL OR strpos(lower(error), lower($2)) > 0
           OR strpos(lower(coalesce(error_code, '')), lower($2)) > 0)
      AND ($3::bigint[] IS NULL OR id = ANY ($3))
      AND ($4::text IS NULL OR connection_id IN (SELECT id FROM connections WHERE tenant = $4))
      AND ($5::text = 'all' OR (resolved_at IS NULL) = ($5::text = 'open'))
    RETURNING 1
)
SELECT count(*) FROM gone

-- name: dlq_connection_exists
-- $2 NULL: of any tenant.
SELECT EXISTS (SELECT 1 FROM connections WHERE id = $1 AND ($2::text IS NULL OR tenant = $2))
