-- Presence, theft alarms and trips announce themselves in the events table (the outbox of the
-- outbound events), written in the transaction of the change they announce. Their type is
-- stored as its catalogue name (docs/webhooks.md): vehicle.online / vehicle.offline /
-- vehicle.comms_lost, alarm.moved_while_locked / alarm.tamper / alarm.crash, trip.started /
-- trip.ended / trip.updated; their sources are new: vehicle, alarm, trip.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_source_check;
ALTER TABLE events ADD CONSTRAINT events_source_check
    CHECK (source IN ('device', 'geofence', 'battery', 'gateway', 'command',
                      'vehicle', 'alarm', 'trip'));

-- Set once a vehicle has been silent past the comms-lost timeout (vehicle.comms_lost was sent);
-- cleared when it is heard again. Vehicles already silent for an hour when this runs count as
-- lost already, so that upgrading does not announce the whole idle fleet at once.
ALTER TABLE vehicle_state ADD COLUMN comms_lost_at timestamptz;
UPDATE vehicle_state SET comms_lost_at = now()
 WHERE NOT online AND last_seen < now() - interval '1 hour';

-- What the ingest upsert's vehicle.online says for a vehicle it brought back (NULL unless that
-- batch did): the row's values before the upsert, which RETURNING cannot give otherwise.
ALTER TABLE vehicle_state ADD COLUMN came_online jsonb;

-- The theft detector's per-vehicle state (alarms.TheftDetector), written with the batch that
-- changed it, so that a restarted gateway neither forgets nor repeats an alarm episode.
ALTER TABLE vehicle_state ADD COLUMN theft jsonb;
