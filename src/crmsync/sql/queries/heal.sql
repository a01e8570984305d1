-- Redis loss and heal (crmsync.worker.heal): lineage markers and rate checkpoints.

-- name: heal_lineages
-- Every connection's lineage as PostgreSQL knows it ($1 NULL: all).
SELECT connection_id, lineage FROM redis_state
WHERE $1::text IS NULL OR connection_id = $1

-- name: heal_checkpoints
-- The last copy of each long window's counts of one connection.
SELECT window_ms, buckets, taken_ms FROM rate_checkpoints WHERE connection_id = $1

-- name: heal_record
-- A heal's new lineage ($3 true: it rebuilt the queue, counted; false: the
-- first marker of a connection whose Redis state was never lost).
INSERT INTO redis_state AS r (connection_id, lineage, heals, healed_at, updated_at)
VALUES ($1, $2, CASE WHEN $3 THEN 1 ELSE 0 END, CASE WHEN $3 THEN now() END, now())
ON CONFLICT (connection_id) DO UPDATE SET
    lineage = EXCLUDED.lineage,
    heals = r.heals + CASE WHEN $3 THEN 1 ELSE 0 END,
    healed_at = CASE WHEN $3 THEN now() ELSE r.healed_at END,
    updated_at = now()

-- name: heal_checkpoint_write
-- One connection's long windows in one statement: ($2 window sizes, $3 their
-- buckets as JSON, $4 Redis time of the copy).
INSERT INTO rate_checkpoints AS k (connection_id, window_ms, buckets, taken_ms)
SELECT $1, u.window_ms, u.buckets, $4
FROM unnest($2::bigint[], $3::jsonb[]) AS u(window_ms, buckets)
ON CONFLICT (connection_id, window_ms) DO UPDATE SET
    buckets = EXCLUDED.buckets, taken_ms = EXCLUDED.taken_ms
WHERE k.taken_ms <= EXCLUDED.taken_ms

-- name: heal_totals
-- Heals of every connection, for status and /metrics.
SELECT connection_id, heals, healed_at FROM redis_state ORDER BY connection_id
