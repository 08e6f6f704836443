-- One row per registered vehicle with its latest state and an operational status: what the HTTP
-- API lists and filters and what the live map colours by. The status rule lives here only, so
-- lists, filters and the live stream always agree. Order of precedence: offline, immobilised,
-- on trip, low battery, available.
CREATE VIEW vehicle_overview AS
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
            WHEN s.soc_pct < CASE v.vehicle_type WHEN 'ebike' THEN 20 ELSE 15 END
                 THEN 'low_battery'
            ELSE 'available' END AS status
FROM vehicles v LEFT JOIN vehicle_state s ON s.vehicle = v.id;
