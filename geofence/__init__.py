"""Geofence core: zones, GBFS-style rules and a vectorised point-in-zone engine (sans-IO).
"""
