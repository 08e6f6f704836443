-- Battery health: the battery core's downsampled history (battery_health, at most one row per
-- vehicle per 15 minutes of sample time, plus one at each pack swap and charging session start
-- or end) and its latest estimates and resumable state on vehicle_state.
-- Columns are battery.COLUMNS; NULL = not known yet (or not applicable: no 12 V on e-bikes).
CREATE TABLE battery_health (
    time                    timestamptz NOT NULL,  -- newest sample the estimates include
    vehicle                 integer NOT NULL,
    soc_pct                 real,
    range_m                 real,
    soh_pct                 real,                  -- usable capacity / nominal, %
    capacity_ah             real,
    resistance_ohm          real,
    efc                     real,                  -- equivalent full cycles of this pack history
    energy_wh_per_km        real,
    aux_rest_v              real,                  -- 12 V resting voltage
    aux_drain_ma            real,                  -- 12 V drain while parked
    aux_hours_to_threshold  real,                  -- until the 12 V battery cannot crank
    charging                boolean,
    pack_seq                integer NOT NULL DEFAULT 0,  -- pack swaps detected before this row
    PRIMARY KEY (vehicle, time)
);
-- A vehicle's trend reads the primary key; fleet-wide reports over time ranges the BRIN index
-- (rows arrive in time order, so it stays tiny).
CREATE INDEX battery_health_time_brin ON battery_health USING brin (time);

-- Headline estimates for the live map and operations, and the core's state (BatteryCore
-- export_state / restore, about 2 KB of JSON per vehicle) so a restarted gateway carries on.
ALTER TABLE vehicle_state
    ADD COLUMN range_m                 real,
    ADD COLUMN soh_pct                 real,
    ADD COLUMN aux_hours_to_threshold  real,
    ADD COLUMN battery_state           jsonb;
