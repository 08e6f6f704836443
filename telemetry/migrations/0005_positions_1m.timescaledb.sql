-- Downsampled history, one row per vehicle and minute, as a continuous aggregate: refreshed by
-- a background job over the recent window, real-time for the minutes not materialised yet.
-- Same columns as the native date_bin view. lat/lon are the minute's last plausible fix.
CREATE MATERIALIZED VIEW positions_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
       vehicle,
       last(lat, time) FILTER (WHERE lat IS NOT NULL AND flags = 0) AS lat,
       last(lon, time) FILTER (WHERE lat IS NOT NULL AND flags = 0) AS lon,
       avg(speed_kmh) AS speed_kmh_avg,
       max(speed_kmh) AS speed_kmh_max,
       last(soc_pct, time) FILTER (WHERE soc_pct IS NOT NULL) AS soc_pct,
       count(*) AS samples
FROM positions
GROUP BY 1, 2
WITH NO DATA;

-- Late uploads within the recent window (devices that were offline) are folded in by the next
-- refresh; the aggregate outlives the raw rows (no retention policy on it).
SELECT add_continuous_aggregate_policy('positions_1m',
    start_offset => INTERVAL '{{recent_days}} days',
    end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute');
