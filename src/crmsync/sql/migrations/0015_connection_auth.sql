-- How a connection authenticates (crmsync.crm.auth.Auth): the kind and what is not
-- secret about it. {"kind": "bearer"} (a static token), {"kind": "oauth-refresh",
-- "client_id", "login_url"?} or {"kind": "jwt", "client_id", "username", "login_url"}.
-- The secrets of every kind (token, client secret, refresh token, private key) stay
-- in the sealed `secrets` column (0009).
ALTER TABLE connections ADD COLUMN auth jsonb NOT NULL DEFAULT '{"kind": "bearer"}';
ALTER TABLE connections ADD CONSTRAINT connections_auth_kind
    CHECK (auth->>'kind' IN ('bearer', 'oauth-refresh', 'jwt'));
