-- What PostgreSQL knows of each connection's Redis state, so a Redis that lost
-- it (flush, restart without persistence, failover) is noticed and rebuilt.
-- lineage: the random run id the connection's Redis state hash carries since
-- the last heal; a claim that finds no marker (or another one) heals.
CREATE TABLE redis_state (
    connection_id text PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    lineage       text NOT NULL,
    heals         bigint NOT NULL DEFAULT 0,
    healed_at     timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The admitted counts of each long rate window (minute, hour, day), copied
-- from Redis every few seconds: after a loss the window is refilled from here.
-- buckets: {"<bucket index>": count} as the window's Redis hash held them;
-- taken_ms: Redis time of the copy.
CREATE TABLE rate_checkpoints (
    connection_id text NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    window_ms     bigint NOT NULL,
    buckets       jsonb NOT NULL,
    taken_ms      bigint NOT NULL,
    PRIMARY KEY (connection_id, window_ms)
);
