-- One contact upsert for every writer of the service (the API's batch and the
-- CSV import's merge): arrays in, one set-based INSERT ... ON CONFLICT out.
-- Rows whose fields are all equal are not updated at all (no new version, no
-- outbox row, no dead tuple); a soft-deleted contact is revived, as a PUT
-- would. Returns the written rows only, with `inserted` (xmax = 0: a fresh row).
-- Input ids must be distinct (ON CONFLICT cannot touch one row twice).
CREATE FUNCTION crmsync_upsert_contacts(
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
    ON CONFLICT (id) DO UPDATE SET
        tenant = EXCLUDED.tenant,
        email = EXCLUDED.email,
        first_name = EXCLUDED.first_name,
        last_name = EXCLUDED.last_name,
        company = EXCLUDED.company,
        status = EXCLUDED.status,
        deleted_at = NULL
    WHERE (c.tenant, c.email, c.first_name, c.last_name, c.company, c.status, c.deleted_at)
          IS DISTINCT FROM
          (EXCLUDED.tenant, EXCLUDED.email, EXCLUDED.first_name, EXCLUDED.last_name,
           EXCLUDED.company, EXCLUDED.status, NULL::timestamptz)
    RETURNING c.id, c.tenant, c.email, c.first_name, c.last_name, c.company, c.status,
              c.version, c.updated_at, c.deleted_at, (c.xmax = 0)
$$;
