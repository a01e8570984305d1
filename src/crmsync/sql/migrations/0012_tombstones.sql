-- Versions never go back for a (tenant, id). A deleted contact leaves a tombstone
-- with the version of its delete; a contact inserted again with the same
-- (tenant, id) continues after it, so every ledger sees the new row as newer
-- than anything it synced (a re-insert starting at 1 again would look synced).
CREATE TABLE contact_tombstones (
    tenant     text NOT NULL,
    id         text NOT NULL,
    version    bigint NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);

-- Contacts deleted before this migration: their last version is what a ledger
-- synced of them (a delete counts one more).
INSERT INTO contact_tombstones (tenant, id, version)
SELECT k.tenant, s.contact_id, max(COALESCE(s.synced_version, 0)) + 1
FROM sync_state s
JOIN connections k ON k.id = s.connection_id
WHERE NOT EXISTS (SELECT 1 FROM contacts c WHERE c.tenant = k.tenant AND c.id = s.contact_id)
GROUP BY k.tenant, s.contact_id;

CREATE OR REPLACE FUNCTION crmsync_contacts_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.version := COALESCE(
            (SELECT t.version FROM contact_tombstones t WHERE t.tenant = NEW.tenant AND t.id = NEW.id),
            0) + 1;
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

-- The delete's outbox row carries version + 1; the tombstone keeps that version.
CREATE OR REPLACE FUNCTION crmsync_outbox_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO contact_tombstones AS t (tenant, id, version)
    SELECT o.tenant, o.id, o.version + 1 FROM old_rows o
    ON CONFLICT (tenant, id) DO UPDATE
        SET version = GREATEST(t.version, EXCLUDED.version), deleted_at = now();
    INSERT INTO outbox (tenant, contact_id, op, version)
    SELECT o.tenant, o.id, 'delete', o.version + 1 FROM old_rows o;
    IF FOUND THEN PERFORM pg_notify('crmsync_outbox', ''); END IF;
    RETURN NULL;
END $$;
