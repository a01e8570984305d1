-- Contacts: the source of truth the service keeps in sync with CRMs.
CREATE TABLE contacts (
    id          text PRIMARY KEY,
    tenant      text NOT NULL DEFAULT 'default',
    email       text NOT NULL,
    first_name  text,
    last_name   text,
    company     text,
    status      text NOT NULL DEFAULT 'active',
    version     bigint NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX contacts_tenant_idx ON contacts (tenant);
