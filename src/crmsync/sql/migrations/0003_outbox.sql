-- Change capture: every real change of a contact writes one outbox row in the
-- same transaction, whoever wrote it (API, CSV import, plain SQL).
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL,
    contact_id  text NOT NULL,
    op          text NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    version     bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Bump the version only when a synced field really changed; a no-op update
-- keeps the old version so the statement trigger below writes nothing.
CREATE FUNCTION crmsync_contacts_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.version := 1;
        NEW.updated_at := now();
        RETURN NEW;
    END IF;
    IF (NEW.tenant, NEW.email, NEW.first_name, NEW.last_name, NEW.company, NEW.status, NEW.deleted_at)
       IS NOT DISTINCT FROM
       (OLD.tenant, OLD.email, OLD.first_name, OLD.last_name, OLD.company, OLD.status, OLD.deleted_at)
    THEN
        NEW.version := OLD.version;
        NEW.updated_at := OLD.updated_at;
    ELSE
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER contacts_version BEFORE INSERT OR UPDATE ON contacts
    FOR EACH ROW EXECUTE FUNCTION crmsync_contacts_version();

-- Statement-level triggers with transition tables: one set-based INSERT into
-- the outbox per statement, so a 1000-row batch costs one outbox statement.
CREATE FUNCTION crmsync_outbox_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (tenant, contact_id, op, version)
    SELECT n.tenant, n.id, CASE WHEN n.deleted_at IS NULL THEN 'insert' ELSE 'delete' END, n.version
    FROM new_rows n;
    IF FOUND THEN PERFORM pg_notify('crmsync_outbox', ''); END IF;
    RETURN NULL;
END $$;

-- Transition tables carry no statistics, so the planner guesses one row each and
-- would join old_rows to new_rows by nested loop: quadratic in the batch size.
CREATE FUNCTION crmsync_outbox_update() RETURNS trigger LANGUAGE plpgsql
SET enable_nestloop = off AS $$
BEGIN
    INSERT INTO outbox (tenant, contact_id, op, version)
    SELECT n.tenant, n.id,
           CASE WHEN n.deleted_at IS NOT NULL THEN 'delete' ELSE 'update' END,
           n.version
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.version <> o.version;
    -- A contact moved to another tenant disappears from the old tenant's CRMs.
    INSERT INTO outbox (tenant, contact_id, op, version)
    SELECT o.tenant, o.id, 'delete', n.version
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.tenant <> o.tenant;
    IF FOUND OR EXISTS (SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
                        WHERE n.version <> o.version) THEN
        PERFORM pg_notify('crmsync_outbox', '');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION crmsync_outbox_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (tenant, contact_id, op, version)
    SELECT o.tenant, o.id, 'delete', o.version + 1 FROM old_rows o;
    IF FOUND THEN PERFORM pg_notify('crmsync_outbox', ''); END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER contacts_outbox_insert AFTER INSERT ON contacts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crmsync_outbox_insert();
CREATE TRIGGER contacts_outbox_update AFTER UPDATE ON contacts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crmsync_outbox_update();
CREATE TRIGGER contacts_outbox_delete AFTER DELETE ON contacts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crmsync_outbox_delete();
