-- A contact belongs to one tenant: its identity is (tenant, id). Two tenants may
-- use the same id for two different contacts, and no write moves a contact from
-- one tenant to another (its records in the old tenant's CRMs would be deleted).
ALTER TABLE contacts DROP CONSTRAINT contacts_pkey;
ALTER TABLE contacts ADD PRIMARY KEY (tenant, id);
DROP INDEX contacts_tenant_idx;  -- the primary key's prefix serves tenant scans

-- Refused for every writer, plain SQL included: a contact for another tenant is a
-- new contact there (and a delete here), never an UPDATE of this one.
CREATE FUNCTION crmsync_contacts_identity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.tenant IS DISTINCT FROM OLD.tenant THEN
        RAISE EXCEPTION 'contact % belongs to tenant %; it cannot move to tenant %',
            OLD.id, OLD.tenant, NEW.tenant
            USING ERRCODE = 'check_violation', CONSTRAINT = 'contacts_tenant_fixed',
                  HINT = 'Write it as a new contact of the other tenant and delete this one.';
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'contact % of tenant % cannot change its id to %',
            OLD.id, OLD.tenant, NEW.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'contacts_id_fixed',
                  HINT = 'Write it as a new contact and delete this one.';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER contacts_identity BEFORE UPDATE OF tenant, id ON contacts
    FOR EACH ROW EXECUTE FUNCTION crmsync_contacts_identity();

-- Old and new rows pair up by (tenant, id): an id alone may name contacts of
-- several tenants.
CREATE OR REPLACE FUNCTION crmsync_outbox_update() RETURNS trigger LANGUAGE plpgsql
SET enable_nestloop = off AS $$
BEGIN
    INSERT INTO outbox (tenant, contact_id, op, version)
    SELECT n.tenant, n.id,
           CASE WHEN n.deleted_at IS NOT NULL THEN 'delete' ELSE 'update' END,
           n.version
    FROM new_rows n JOIN old_rows o ON o.tenant = n.tenant AND o.id = n.id
    WHERE n.version <> o.version;
    IF FOUND THEN PERFORM pg_notify('crmsync_outbox', ''); END IF;
    RETURN NULL;
END $$;

-- The one contact upsert (0006), now by (tenant, id): a row never changes tenant.
-- Input (tenant, id) pairs must be distinct (ON CONFLICT cannot touch one row twice).
CREATE OR REPLACE FUNCTION crmsync_upsert_contacts(
    text[], text[], text[], text[], text[], text[], text[]
) RETURNS TABLE (
    id text, tenant text, email text, first_name text, last_name text, company text,
    status text, version bigint, updated_at timestamptz, deleted_at timestamptz,
    inserted boolean
) LANGUAGE sql VOLATILE AS $$
    INSERT INTO contacts AS c (id, tenant, email, first_name, last_name, company, status, deleted_at)
    SELECT t.id, t.tenant, t.email, t.first_name, t.last_name, t.company, t.status, NULL
    FROM unnest($1, $2, $3, $4, $5, $6, $7)
        AS t (id, tenant, email, first_name, last_name, company, status)
    ON CONFLICT (tenant, id) DO UPDATE SET
        email = EXCLUDED.email,
        first_name = EXCLUDED.first_name,
        last_name = EXCLUDED.last_name,
        company = EXCLUDED.company,
        status = EXCLUDED.status,
        deleted_at = NULL
    WHERE (c.email, c.first_name, c.last_name, c.company, c.status, c.deleted_at)
          IS DISTINCT FROM
          (EXCLUDED.email, EXCLUDED.first_name, EXCLUDED.last_name,
           EXCLUDED.company, EXCLUDED.status, NULL::timestamptz)
    RETURNING c.id, c.tenant, c.email, c.first_name, c.last_name, c.company, c.status,
              c.version, c.updated_at, c.deleted_at, (c.xmax = 0)
$$;
