-- Custom attributes of a contact (crmsync.contacts.ATTRIBUTES_RULE): a flat JSON
-- object of scalars, written by the API and the CSV import, mapped to CRM fields by
-- a connection's field_map ("attributes.<key>"). A change of them is a change of
-- the contact: it bumps the version and is captured like any other field.
ALTER TABLE contacts ADD COLUMN attributes jsonb NOT NULL DEFAULT '{}';
ALTER TABLE contacts ADD CONSTRAINT contacts_attributes_object
    CHECK (jsonb_typeof(attributes) = 'object');

-- The version trigger of 0012 (a re-insert continues after its tombstone), with
-- the attributes among the fields whose change is a change.
CREATE OR REPLACE FUNCTION crmsync_contacts_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.version := COALESCE(
            (SELECT t.version FROM contact_tombstones t WHERE t.tenant = NEW.tenant AND t.id = NEW.id),
            0) + 1;
        NEW.updated_at := now();
        RETURN NEW;
    END IF;
    IF (NEW.tenant, NEW.email, NEW.first_name, NEW.last_name, NEW.company, NEW.status,
        NEW.attributes, NEW.deleted_at)
       IS NOT DISTINCT FROM
       (OLD.tenant, OLD.email, OLD.first_name, OLD.last_name, OLD.company, OLD.status,
        OLD.attributes, OLD.deleted_at)
    THEN
        NEW.version := OLD.version;
        NEW.updated_at := OLD.updated_at;
    ELSE
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END $$;

-- The one contact upsert (0007) with the attributes: a writer that does not send
-- them (the seven-array form, kept for plain SQL callers) leaves them as they are.
CREATE OR REPLACE FUNCTION crmsync_upsert_contacts(
    text[], text[], text[], text[], text[], text[], text[], jsonb[]
) RETURNS TABLE (
    id text, tenant text, email text, first_name text, last_name text, company text,
    status text, attributes jsonb, version bigint, updated_at timestamptz,
    deleted_at timestamptz, inserted boolean
) LANGUAGE sql VOLATILE AS $$
    INSERT INTO contacts AS c
        (id, tenant, email, first_name, last_name, company, status, attributes, deleted_at)
    SELECT t.id, t.tenant, t.email, t.first_name, t.last_name, t.company, t.status,
           COALESCE(t.attributes, '{}'::jsonb), NULL
    FROM unnest($1, $2, $3, $4, $5, $6, $7, $8)
        AS t (id, tenant, email, first_name, last_name, company, status, attributes)
    ON CONFLICT (tenant, id) DO UPDATE SET
        email = EXCLUDED.email,
        first_name = EXCLUDED.first_name,
        last_name = EXCLUDED.last_name,
        company = EXCLUDED.company,
        status = EXCLUDED.status,
        attributes = EXCLUDED.attributes,
        deleted_at = NULL
    WHERE (c.email, c.first_name, c.last_name, c.company, c.status, c.attributes, c.deleted_at)
          IS DISTINCT FROM
          (EXCLUDED.email, EXCLUDED.first_name, EXCLUDED.last_name,
           EXCLUDED.company, EXCLUDED.status, EXCLUDED.attributes, NULL::timestamptz)
    RETURNING c.id, c.tenant, c.email, c.first_name, c.last_name, c.company, c.status,
              c.attributes, c.version, c.updated_at, c.deleted_at, (c.xmax = 0)
$$;
