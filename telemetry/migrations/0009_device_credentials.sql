-- Device identity: the secrets a TCU proves itself with, stored only as hashes
-- (docs/device-identity.md). One secret serves both transports: its SHA-256 is what a CoAP token
-- or an HTTP-auth password is checked against, its PBKDF2-SHA512 form ($7$, as mosquitto_passwd
-- writes it) goes into the broker's password file. Written by telemetry.store.DeviceCredentials.
--
-- Keyed by device_id, not vehicles.id: a credential belongs to the TCU, and follows it if the TCU
-- is fitted to another vehicle. It authenticates only while its device is in the registry.
CREATE TABLE device_credentials (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id       text NOT NULL CHECK (device_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    secret_sha256   bytea NOT NULL UNIQUE CHECK (length(secret_sha256) = 32),
    mosquitto_hash  text NOT NULL CHECK (mosquitto_hash LIKE '$7$%'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- NULL: valid until replaced. A rotation sets it on the credentials it replaces: now() for
    -- an immediate revocation, later for a grace period in which both secrets work.
    expires_at      timestamptz
);
CREATE INDEX device_credentials_device_idx ON device_credentials (device_id, created_at DESC);
