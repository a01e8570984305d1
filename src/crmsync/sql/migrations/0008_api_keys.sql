-- API keys with a scope (crmsync.apikeys). A key is shown once, when created;
-- only its SHA-256 is kept. The key text carries its id (crmsync_<id>_<secret>),
-- so a presented key is looked up by id and its hash compared in constant time.
-- role: admin (every tenant, connections, keys; tenant IS NULL),
--       writer (its tenant's contacts and dead letters), reader (read only).
CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    tenant        text,
    role          text NOT NULL CHECK (role IN ('admin', 'writer', 'reader')),
    hash          bytea NOT NULL,
    name          text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    CHECK ((role = 'admin') = (tenant IS NULL))
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant);
