-- Autovacuum for crmsync's churning tables, per table (storage parameters; no
-- server restart, no server-wide change). Apply once to the crmsync database:
--     psql "$CRMSYNC_DATABASE_URL" -f scripts/autovacuum.sql
-- `crmsync bench --scenario sustained` applies it to its own database.
--
-- outbox: a queue (insert, then delete once Redis has the rows). Vacuum after a
-- fixed number of dead rows whatever the table's size, unthrottled, so its pages
-- are reused instead of growing; the relay also vacuums it after 50,000 moved rows.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0
);
-- sync_state: one upsert per record synced. Room on each page for HOT updates
-- (no index column changes), and vacuum at 2% dead rows instead of 20%.
ALTER TABLE sync_state SET (
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);
-- contacts: updated in place by writers; the same, at 5%.
ALTER TABLE contacts SET (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 1
);
