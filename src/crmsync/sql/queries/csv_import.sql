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
    status     text NOT NULL,
    attributes text NOT NULL DEFAULT '{}'  -- JSON text: COPY has no binary jsonb encoder
) ON COMMIT DROP

-- name: csv_merge_staging
-- The last line of a contact (tenant, id) wins; written by the one contact
-- upsert (crmsync_upsert_contacts, migration 0007): unchanged contacts are not
-- updated, soft-deleted contacts in the file are revived, as a PUT would.
WITH latest AS (
    SELECT DISTINCT ON (tenant, id)
           id, tenant, email, first_name, last_name, company, status, attributes
    FROM crmsync_csv_staging
    ORDER BY tenant, id, line_no DESC
),
up AS (
    SELECT u.inserted
    FROM crmsync_upsert_contacts(
        (SELECT array_agg(id ORDER BY id) FROM latest),
        (SELECT array_agg(tenant ORDER BY id) FROM latest),
        (SELECT array_agg(email ORDER BY id) FROM latest),
        (SELECT array_agg(first_name ORDER BY id) FROM latest),
        (SELECT array_agg(last_name ORDER BY id) FROM latest),
        (SELECT array_agg(company ORDER BY id) FROM latest),
        (SELECT array_agg(status ORDER BY id) FROM latest),
        (SELECT array_agg(attributes::jsonb ORDER BY id) FROM latest)
    ) AS u
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated,
       (SELECT count(*) FROM latest) AS distinct_ids
FROM up
