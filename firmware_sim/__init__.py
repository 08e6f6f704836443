"""Firmware simulator: e-bike and car TCUs that speak docs/protocol.md, for tests, demos and benchmarks."""
