"""Thin HTTP API (FastAPI) over the stores and cores: vehicles, commands, zones, events.
"""
