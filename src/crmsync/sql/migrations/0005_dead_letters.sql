-- Permanent failures and exhausted retries, with the CRM's own error.
CREATE TABLE dead_letters (
    id             bigserial PRIMARY KEY,
    connection_id  text NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    contact_id     text NOT NULL,
    version        bigint,
    operation      text NOT NULL,
    error_code     text,
    error          text NOT NULL,
    http_status    integer,
    payload        jsonb,
    attempts       integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_conn_idx ON dead_letters (connection_id, created_at);
CREATE INDEX dead_letters_contact_idx ON dead_letters (contact_id);
