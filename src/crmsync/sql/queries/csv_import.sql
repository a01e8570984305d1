-- CSV import (crmsync.capture.csv_import): COPY into staging, one merge.

-- name: csv_create_staging
CREATE TEMP TABLE crmsync_csv_staging (
    line_no    integer NOT NULL,
    id         text NOT NULL,
    tenant     text NOT NULL,
    email      text NOT NULL,
    first_name text,
    last_name  text,
    company    text,
    status     text NOT NULL
) ON COMMIT DROP

-- name: csv_merge_staging
-- The last line of an id wins. Unchanged contacts are not updated (no new
-- version, no outbox row); soft-deleted contacts in the file are revived, as
-- a PUT would. xmax = 0 marks a freshly inserted row.
WITH latest AS (
    SELECT DISTINCT ON (id) id, tenant, email, first_name, last_name, company, status
    FROM crmsync_csv_staging
    ORDER BY id, line_no DESC
),
up AS (
    INSERT INTO contacts AS c (id, tenant, email, first_name, last_name, company, status, deleted_at)
    SELECT id, tenant, email, first_name, last_name, company, status, NULL FROM latest
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
    RETURNING (c.xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated,
       (SELECT count(*) FROM latest) AS distinct_ids
FROM up
