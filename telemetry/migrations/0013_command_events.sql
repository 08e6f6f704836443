-- Command state changes are events too (GET /v1/events and the live stream read them from
-- command_history, no copy): command_history takes its ids from the events' sequence, so that one
-- id orders both tables and one cursor (`after`) pages through both.
ALTER TABLE command_history ALTER COLUMN id DROP IDENTITY;

-- Rows already there are numbered after every event, in their order. Negated first, because
-- the new ids may equal old ones not renumbered yet.
DO $$
DECLARE
    base bigint := nextval('events_id_seq');
BEGIN
    UPDATE command_history SET id = -id;
    UPDATE command_history h SET id = base + n.k - 1
      FROM (SELECT id, row_number() OVER (ORDER BY id DESC) AS k FROM command_history) n
     WHERE h.id = n.id;
    PERFORM setval('events_id_seq', base + (SELECT count(*) FROM command_history));
END $$;

ALTER TABLE command_history ALTER COLUMN id SET DEFAULT nextval('events_id_seq');
-- /v1/events by time without a vehicle, as events_time_idx serves the events.
CREATE INDEX command_history_at_idx ON command_history (at);
