-- Rides for the public feeds (api/feed_queries.py): a succeeded unlock opens one, the next
-- succeeded lock closes it. MDS reads them by the hour they ended in (finished_at); GBFS reads
-- each vehicle's newest one to rotate its public id. Both only ever want these rows.
CREATE INDEX commands_ride_time_idx ON commands (finished_at)
    WHERE type IN ('lock', 'unlock') AND state = 'succeeded';
CREATE INDEX commands_ride_vehicle_idx ON commands (vehicle, seq)
    WHERE type IN ('lock', 'unlock') AND state = 'succeeded';
