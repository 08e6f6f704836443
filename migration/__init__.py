"""The migration room: a legacy platform's fleet (Traccar, GBFS, CSV) read, checked and mapped
by sans-IO mappers, and imported by a thin shell through the store (docs/migration.md)."""
