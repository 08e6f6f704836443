"""Telemetry: the device sample contract, its codecs and validation, and the telemetry store."""
