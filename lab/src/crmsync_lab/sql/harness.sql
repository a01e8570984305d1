-- Queries of the test and demo harness (crmsync_lab.harness).

-- name: harness_unsettled
-- (connection, contact) pairs of the given connections' tenants whose ledger
-- row is not yet in a final state for the contact's current version:
-- live contacts need synced/skipped at >= their version (or dead: settled,
-- and reported by the check); deleted ones need no CRM record left to remove
-- (a create still retrying when the delete came is dropped by the worker: no
-- external id, nothing to delete; the queue check covers retries in flight).
SELECT k.id AS connection_id, count(*) AS unsettled
FROM connections k
JOIN contacts c ON c.tenant = k.tenant
LEFT JOIN sync_state s ON s.connection_id = k.id AND s.contact_id = c.id
WHERE k.id = ANY ($1::text[])
  AND NOT COALESCE(
      CASE WHEN c.deleted_at IS NULL THEN
          s.status = 'dead'
          OR (s.status IN ('synced', 'skipped') AND s.synced_version >= c.version)
      ELSE
          s.contact_id IS NULL
          OR s.status IN ('deleted', 'dead')
          OR s.external_id IS NULL
      END, false)
GROUP BY k.id;

