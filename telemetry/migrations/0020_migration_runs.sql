-- Migrations of a legacy platform's fleet (`fleetgate migrate import`, docs/migration.md): one
-- row per run with what it imported and skipped and why, and per migration source and vehicle
-- the newest sample time imported, from which `--since-last-run` takes only the delta.
CREATE TABLE migration_runs (
    id           serial PRIMARY KEY,
    batch        text NOT NULL,                  -- the operator's name for the batch of vehicles
    source       text NOT NULL,                  -- traccar | gbfs | csv
    origin       text NOT NULL,                  -- the export's folder, file or URL
    delta        boolean NOT NULL DEFAULT false, -- --since-last-run
    outcome      text NOT NULL CHECK (outcome IN ('imported', 'already_imported', 'refused')),
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    imported     jsonb NOT NULL,                 -- {"vehicles", "devices", "zones", "positions"}
    skipped      jsonb NOT NULL,                 -- {reason: count}
    report       jsonb NOT NULL                  -- the --report document of the run
);
CREATE INDEX migration_runs_batch ON migration_runs (batch, id);

CREATE TABLE migration_watermarks (
    source   text NOT NULL,
    vehicle  integer NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    time     timestamptz NOT NULL,               -- the newest sample of this source imported
    run      integer NOT NULL REFERENCES migration_runs (id),
    PRIMARY KEY (source, vehicle)
);
