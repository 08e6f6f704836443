-- Geofencing zones (GeoJSON geometry + GBFS v3 rules), validated by the geofence core before they
-- are written. Any change bumps zone_set.version (statement trigger) and notifies
-- 'fleetgate_zones', so running gateways swap the new zone set in without a restart.
CREATE TABLE zones (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    name        text NOT NULL DEFAULT '',
    kind        text NOT NULL DEFAULT 'other'
                CHECK (kind IN ('operating_area', 'no_parking', 'slow', 'no_ride', 'station',
                                'other')),
    geometry    jsonb NOT NULL,      -- GeoJSON Polygon / MultiPolygon, or {"type": "Circle", ...}
    rules       jsonb NOT NULL DEFAULT '[]',   -- GBFS v3 rules[]
    priority    integer NOT NULL DEFAULT 0,    -- lower wins where zones overlap
    start       timestamptz,                   -- the zone exists from (NULL: always)
    "end"       timestamptz,                   -- until (NULL: forever)
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ("end" IS NULL OR start IS NULL OR "end" > start)
);

-- The zone set as a whole: its version and the GBFS global rules (for everywhere else).
CREATE TABLE zone_set (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version       bigint NOT NULL DEFAULT 1,
    global_rules  jsonb NOT NULL DEFAULT '[]',
    updated_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO zone_set DEFAULT VALUES;

CREATE FUNCTION zones_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE zone_set SET version = version + 1, updated_at = now();
    PERFORM pg_notify('fleetgate_zones', '');
    RETURN NULL;
END $$;
CREATE TRIGGER zones_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON zones
    FOR EACH STATEMENT EXECUTE FUNCTION zones_changed();

CREATE FUNCTION zone_rules_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.global_rules IS DISTINCT FROM OLD.global_rules THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
        PERFORM pg_notify('fleetgate_zones', '');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER zone_rules_changed BEFORE UPDATE ON zone_set
    FOR EACH ROW EXECUTE FUNCTION zone_rules_changed();

-- The geofence tracker's state per vehicle (confirmed zones, pending hysteresis, open violation
-- episodes), written with the batch that changed it, so a restarted gateway continues without
-- false enter events. geofence->'zones' lists the zone ids the vehicle is in.
ALTER TABLE vehicle_state ADD COLUMN geofence jsonb;
