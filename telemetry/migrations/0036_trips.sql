-- Trips: a ride from the vehicle reporting itself unlocked to it reporting itself locked again
-- (what an unlock and a lock command make it do). Opened and closed in the ingest batch's
-- transaction; its figures are measured from the stored samples of [started_at, ended_at] once
-- it is closed ('closing' -> 'ended', with trip.ended), and measured again when samples of
-- that interval arrive later (`stale`, then trip.updated if a figure changed). Figures never
-- depend on a query's window: they are stored here.
CREATE TABLE trips (
    id                  bigserial PRIMARY KEY,
    vehicle             integer NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    status              text NOT NULL CHECK (status IN ('open', 'closing', 'ended')),
    stale               boolean NOT NULL DEFAULT false,  -- samples of its interval came later
    revision            integer NOT NULL DEFAULT 0,      -- 1 at trip.ended, +1 per trip.updated
    started_at          timestamptz NOT NULL,
    ended_at            timestamptz,
    start_lat           double precision,
    start_lon           double precision,
    end_lat             double precision,
    end_lon             double precision,
    distance_m          double precision,
    distance_source     text CHECK (distance_source IN ('odometer', 'fixes', 'fixes+odometer')),
    gps_distance_m      double precision,  -- from the plausible fixes alone
    duration_s          double precision,
    energy_wh           double precision,  -- at the pack terminals, or from the SoC used
    energy_source       text CHECK (energy_source IN ('pack_power', 'soc')),
    soc_start_pct       real,
    soc_end_pct         real,
    max_speed_kmh       real,
    fixes_used          integer,
    fixes_rejected      integer,           -- flagged or implausible jumps left out
    zones_visited       text[],
    end_zone            text,              -- the zone whose rules govern the end position
    parking_allowed     boolean,           -- ride_end_allowed there (GBFS)
    ended_outside_operating_area boolean,
    speeding_episodes   integer,
    unlock_command      uuid,              -- the unlock / lock commands that began / ended it
    lock_command        uuid,
    measured_at         timestamptz,
    UNIQUE (vehicle, started_at)
);
CREATE INDEX trips_started_idx ON trips (started_at);
-- A batch's late samples find the closed trips they fall into (telemetry/store/_trips.py): for
-- live samples the range ended_at >= the batch's oldest sample is empty.
CREATE INDEX trips_vehicle_ended_idx ON trips (vehicle, ended_at);
-- What the trip measurer picks up: closed and not yet measured, or measured on too few samples.
CREATE INDEX trips_to_measure_idx ON trips (id) WHERE status = 'closing' OR stale;
-- A vehicle's open trip (at most one).
CREATE UNIQUE INDEX trips_open_idx ON trips (vehicle) WHERE status = 'open';
