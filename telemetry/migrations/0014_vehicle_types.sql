-- Vehicle types after GBFS vehicle_types (telemetry/vehicle_types.py): a fleet has e-bikes,
-- cargo e-bikes, scooters, mopeds and cars, and an operator may add more. vehicles.vehicle_type
-- now names a row here instead of being one of ('ebike', 'car'); those two keep their meaning
-- (and their old battery numbers), so existing vehicles stay as they are.
CREATE TABLE vehicle_types (
    id                 text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    name               text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    form_factor        text NOT NULL CHECK (form_factor IN (
                           'bicycle', 'cargo_bicycle', 'car', 'moped', 'scooter_standing',
                           'scooter_seated', 'other')),
    propulsion_type    text NOT NULL CHECK (propulsion_type IN (
                           'human', 'electric_assist', 'electric', 'combustion',
                           'combustion_diesel', 'hybrid', 'plug_in_hybrid',
                           'hydrogen_fuel_cell')),
    max_speed_kmh      double precision CHECK (max_speed_kmh > 0),
    max_range_meters   double precision CHECK (max_range_meters > 0),
    battery_nominal_ah double precision CHECK (battery_nominal_ah > 0),
    battery_nominal_v  double precision CHECK (battery_nominal_v > 0),
    low_soc_pct        double precision NOT NULL DEFAULT 20
                       CHECK (low_soc_pct BETWEEN 0 AND 100),
    battery_swappable  boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((battery_nominal_ah IS NULL) = (battery_nominal_v IS NULL))
);

-- The same rows as BUILTIN_VEHICLE_TYPES (tests/telemetry/store/test_vehicle_types.py compares).
INSERT INTO vehicle_types (id, name, form_factor, propulsion_type, max_speed_kmh,
                           max_range_meters, battery_nominal_ah, battery_nominal_v, low_soc_pct,
                           battery_swappable) VALUES
    ('ebike', 'E-bike', 'bicycle', 'electric_assist', 25, 60000,
     500::float8 / 36::float8, 36, 20, true),
    ('cargo_ebike', 'Cargo e-bike', 'cargo_bicycle', 'electric_assist', 25, 50000,
     1000::float8 / 48::float8, 48, 20, true),
    ('scooter', 'E-scooter', 'scooter_standing', 'electric', 20, 40000, 15.3, 36, 20, true),
    ('moped', 'E-moped', 'moped', 'electric', 45, 70000, 2000::float8 / 60::float8, 60, 20, true),
    ('car', 'Electric car', 'car', 'electric', 150, 300000, 125, 400, 15, false);

ALTER TABLE vehicles DROP CONSTRAINT vehicles_vehicle_type_check;
ALTER TABLE vehicles ADD CONSTRAINT vehicles_vehicle_type_fkey
    FOREIGN KEY (vehicle_type) REFERENCES vehicle_types (id) ON UPDATE CASCADE;
CREATE INDEX vehicles_vehicle_type_idx ON vehicles (vehicle_type);

-- The low-battery status now follows each type's low_soc_pct (was 20 for e-bikes, 15 otherwise).
CREATE OR REPLACE VIEW vehicle_overview AS
SELECT v.id AS vehicle, v.vehicle_ref, v.device_id, v.vehicle_type,
       s.time, s.fix_time, s.lat, s.lon, s.speed_kmh, s.heading_deg, s.soc_pct, s.range_m,
       s.soh_pct, s.aux_v, s.aux_hours_to_threshold, s.odometer_m, s.locked, s.ignition,
       s.immobilised, s.charging, coalesce(s.online, false) AS online, s.last_seen,
       s.updated_at,
       coalesce(ARRAY(SELECT jsonb_array_elements_text(s.geofence -> 'zones')), '{}'::text[])
           AS zones,
       CASE WHEN NOT coalesce(s.online, false) THEN 'offline'
            WHEN s.immobilised THEN 'immobilised'
            WHEN s.locked IS FALSE OR s.ignition OR s.speed_kmh > 3 THEN 'on_trip'
            WHEN s.soc_pct < t.low_soc_pct THEN 'low_battery'
            ELSE 'available' END AS status
FROM vehicles v
JOIN vehicle_types t ON t.id = v.vehicle_type
LEFT JOIN vehicle_state s ON s.vehicle = v.id;
