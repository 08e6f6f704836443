-- API keys of the HTTP API's callers (rental, billing, operations, administrators). The secret is
-- stored as a SHA-256 hash: keys are 256-bit random strings, so a fast hash loses nothing and
-- keeps every request's check cheap. Scopes say what a key may do.
CREATE TABLE api_keys (
    id            text PRIMARY KEY CHECK (id ~ '^[a-z0-9]{8,32}$'),   -- public part of the key
    name          text NOT NULL UNIQUE,
    scopes        text[] NOT NULL,
    secret_sha256 bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
