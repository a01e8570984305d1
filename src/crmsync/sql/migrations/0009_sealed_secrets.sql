-- CRM credentials encrypted at rest (crmsync.vault, AES-GCM under
-- CRMSYNC_SECRET_KEY). `secrets` is one sealed JSON object ({"token": ...}; more
-- credentials of a connection fit in the same object), prefixed with the id of
-- the key that sealed it; `token_hint` is all users ever see of the token.
ALTER TABLE connections ADD COLUMN secrets text, ADD COLUMN token_hint text;

-- Plaintext tokens of connections added before this migration wait here until
-- `crmsync migrate` (with CRMSYNC_SECRET_KEY set) seals them and empties the
-- table; the connections table itself has no column that could hold one.
CREATE TABLE connections_unsealed_tokens (
    connection_id text PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    token         text NOT NULL
);
INSERT INTO connections_unsealed_tokens (connection_id, token)
SELECT id, token FROM connections;
ALTER TABLE connections DROP COLUMN token;
