-- The per-record ledger: what each connection holds of each contact.
-- status: synced | skipped | deleted | retrying | dead
CREATE TABLE sync_state (
    connection_id  text NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    contact_id     text NOT NULL,
    external_id    text,
    synced_version bigint,
    status         text NOT NULL,
    rule           text,
    attempts       integer NOT NULL DEFAULT 0,
    last_error     text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, contact_id)
);
CREATE INDEX sync_state_contact_idx ON sync_state (contact_id);
