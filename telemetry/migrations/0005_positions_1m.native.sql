-- Downsampled history, one row per vehicle and minute, computed on read with date_bin over the
-- raw partitions (TimescaleDB keeps the same columns materialised in a continuous aggregate).
-- lat/lon are the minute's last plausible fix; soc_pct its last reported charge.
CREATE VIEW positions_1m AS
SELECT date_bin(INTERVAL '1 minute', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       vehicle,
       (array_agg(lat ORDER BY time DESC) FILTER (WHERE lat IS NOT NULL AND flags = 0))[1] AS lat,
       (array_agg(lon ORDER BY time DESC) FILTER (WHERE lat IS NOT NULL AND flags = 0))[1] AS lon,
       avg(speed_kmh) AS speed_kmh_avg,
       max(speed_kmh) AS speed_kmh_max,
       (array_agg(soc_pct ORDER BY time DESC) FILTER (WHERE soc_pct IS NOT NULL))[1] AS soc_pct,
       count(*) AS samples
FROM positions
GROUP BY 1, 2;
