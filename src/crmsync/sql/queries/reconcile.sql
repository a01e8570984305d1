-- Reconcile (crmsync.reconcile): what each connection still has to receive,
-- read from PostgreSQL alone, in keyset pages ($3 = last id of the previous
-- page, '' first; $4 = page size).

-- name: reconcile_connections
-- $1 NULL: every connection.
SELECT id, tenant FROM connections WHERE $1::text IS NULL OR id = $1 ORDER BY id

-- name: reconcile_contacts
-- Contacts of the connection's tenant whose synced version differs from their
-- version. Left out: deleted contacts the CRM cannot hold (as rules.in_crm and
-- rules.maybe_in_crm say: a record id known, or a send that may have created
-- one without us learning its id), and dead ones that have not changed since
-- they died (they wait in the dead letters for replay).
-- band: 2 DELETE if deleted, 0 CREATE if not in the CRM, else 1 UPDATE.
SELECT c.id,
       CASE
           WHEN c.deleted_at IS NOT NULL THEN 2
           WHEN s.external_id IS NULL OR s.status = 'deleted' THEN 0
           ELSE 1
       END AS band
FROM contacts c
LEFT JOIN sync_state s ON s.connection_id = $1 AND s.contact_id = c.id
WHERE c.tenant = $2
  AND c.id > $3
  AND s.synced_version IS DISTINCT FROM c.version
  AND NOT (c.deleted_at IS NOT NULL AND NOT (
        s.status IS DISTINCT FROM 'deleted'
        AND (s.external_id IS NOT NULL OR s.status IN ('synced', 'retrying', 'dead'))))
  AND NOT (s.status IS NOT DISTINCT FROM 'dead' AND c.updated_at <= s.updated_at)
ORDER BY c.id
LIMIT $4

-- name: reconcile_orphans
-- Records the CRM holds, or may hold (a send without the record's id learnt),
-- for contacts this tenant no longer has (hard-deleted): they need a DELETE.
SELECT s.contact_id AS id
FROM sync_state s
LEFT JOIN contacts c ON c.tenant = $2 AND c.id = s.contact_id
WHERE s.connection_id = $1
  AND s.contact_id > $3
  AND (s.external_id IS NOT NULL OR s.status IN ('synced', 'retrying'))
  AND s.status NOT IN ('deleted', 'dead')
  AND c.id IS NULL
ORDER BY s.contact_id
LIMIT $4
