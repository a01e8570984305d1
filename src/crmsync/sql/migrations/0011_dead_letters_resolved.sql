-- A dead letter resolves itself when a later version of its contact syncs to its
-- connection (or the contact's delete succeeds): kept as history with the time,
-- no longer counted by status, `dlq list` or crmsync_dead_letters.
ALTER TABLE dead_letters ADD COLUMN resolved_at timestamptz;
-- The worker's lookup per synced contact, and every count of open letters.
CREATE INDEX dead_letters_open_idx ON dead_letters (connection_id, contact_id)
    WHERE resolved_at IS NULL;
