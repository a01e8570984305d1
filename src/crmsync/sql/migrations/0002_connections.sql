-- One row per CRM account. rate_limits: [{"limit": 100, "window_ms": 1000}, ...]
CREATE TABLE connections (
    id            text PRIMARY KEY,
    tenant        text NOT NULL DEFAULT 'default',
    crm           text NOT NULL CHECK (crm IN ('salesforce', 'hubspot')),
    account       text NOT NULL,
    base_url      text NOT NULL,
    token         text NOT NULL,
    rate_limits   jsonb NOT NULL DEFAULT '[]',
    settings      jsonb NOT NULL DEFAULT '{}',
    paused_reason text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX connections_tenant_idx ON connections (tenant);
