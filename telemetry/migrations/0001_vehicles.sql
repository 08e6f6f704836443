-- The registry: one row per vehicle and the TCU (device) fitted to it.
-- vehicles.id is the compact surrogate key every other table and the columnar batches use.
CREATE TABLE vehicles (
    id           serial PRIMARY KEY,
    vehicle_ref  text NOT NULL UNIQUE,   -- the operator's own reference for the vehicle
    device_id    text NOT NULL UNIQUE    -- MQTT client id of the TCU (docs/protocol.md)
                 CHECK (device_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    vehicle_type text NOT NULL CHECK (vehicle_type IN ('ebike', 'car')),
    created_at   timestamptz NOT NULL DEFAULT now()
);
