"""Benchmarks: each measures fleetgate beside a baseline in the same run and prints one JSON
document. Run one from the repository root as `python -m benchmarks.<name>` (README.md here);
what they share is in _runner.py (command line, report, timing) and _services.py (broker,
database, gateway)."""
