-- The evidence of a migration's go-live gate (`fleetgate migrate gate`, docs/migration.md): one
-- row per piece of evidence as it is produced — a parallel run validated, a sample signed off, a
-- rehearsal, a roll-back executed, a fail-over drill, a load run — with whether it passed, when,
-- and what it found. batch is the batch it concerns (NULL for evidence of the deployment as a
-- whole, such as a fail-over drill). Rows are only ever added: the gate reads the newest of each
-- kind, and the older ones stay as the record of what was shown when.
CREATE TABLE migration_evidence (
    id           serial PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('parallel_run', 'signoff', 'rehearsal', 'rollback',
                                              'failover_drill', 'load')),
    batch        text,
    passed       boolean NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX migration_evidence_kind_batch ON migration_evidence (kind, batch, recorded_at DESC);
