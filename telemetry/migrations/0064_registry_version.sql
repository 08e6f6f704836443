-- One counter that moves with every change to the vehicle registry (a vehicle registered, its TCU
-- swapped, its type changed, a vehicle removed), so that a process keeping a copy of the registry
-- (the command service, gateway/commands/vehicles.py) can tell with one tiny query whether to
-- read it again, instead of reading every vehicle every half minute. A row, not a sequence: the
-- new version is seen only when the change that made it commits, so a reader never takes a
-- version for a registry that does not contain the change yet.
CREATE TABLE registry_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  bigint NOT NULL
);
INSERT INTO registry_version (only_row, version) VALUES (true, 0);

CREATE FUNCTION bump_registry_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry_version SET version = version + 1;
    RETURN NULL;
END
$$;

-- Per statement, not per row: a fleet registered in one statement moves the version once.
CREATE TRIGGER vehicles_registry_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON vehicles
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
