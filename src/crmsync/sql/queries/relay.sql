-- The relay (crmsync.capture.relay): outbox -> Redis.

-- name: relay_take
-- The oldest batch nobody else holds (concurrent relays take disjoint rows),
-- deleted in the caller's transaction: the delete becomes real only when the
-- caller commits, after Redis has the entries; a rollback puts them back.
-- The ids go to the delete as an array (= ANY: one primary-key probe each):
-- as `IN (subquery)` the planner may join the whole outbox against the batch
-- when its statistics are stale (a vacuum that ran during a bulk insert saw
-- the table nearly empty), minutes per batch.
DELETE FROM outbox
WHERE id = ANY (ARRAY(
    SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
))
RETURNING tenant, contact_id, op

-- name: relay_connections
SELECT id, tenant FROM connections ORDER BY id

-- name: relay_unsynced_connections
-- Connections whose ledger is empty: new, or added while no relay ran. The
-- relay backfills them when it starts (queueing is idempotent).
SELECT c.id, c.tenant
FROM connections c
WHERE NOT EXISTS (SELECT 1 FROM sync_state s WHERE s.connection_id = c.id)
ORDER BY c.id

-- name: relay_vacuum_outbox
-- After a bulk move (a backfill, a big import) the outbox is full of dead rows
-- until autovacuum comes round (a minute or more); relay_take's index scan walks
-- them on every batch, so each take costs in proportion to the rows already
-- moved. The relay vacuums at once.
VACUUM (ANALYZE) outbox
