-- /v1/events?after= pages in commit order (api/queries.py, docs/webhooks.md): by (xid, id), the
-- rows stored before 0030 (no xid) first as xid 0. These indexes let a page start at its cursor
-- instead of sorting every event.
CREATE INDEX events_commit_order_idx ON events ((coalesce(xid, '0'::xid8)), id);
CREATE INDEX command_history_commit_order_idx ON command_history ((coalesce(xid, '0'::xid8)), id);
