"""Public feeds built from plain data: GBFS v3.0 (the public, privacy-safe view of the rentable
fleet) and MDS 2.0 Provider (the regulator's view of vehicles, trips, telemetry and events).

Sans-IO: the API shell reads the store and hands columns and rows in; documents come out.
"""

from feeds.fleet import FleetState, public_vehicle_ids, rentable
from feeds.gbfs import GBFS_VERSION, GbfsFeeds, Station
from feeds.mds import (
    EVENT_MAP,
    MDS_MEDIA_TYPE,
    MDS_VERSION,
    BadHour,
    MdsProvider,
    mds_mode,
    parse_hour,
)
from feeds.rides import Ride, RideCommand, TripFigures, rides_from_commands, rides_preferring_trips
from feeds.system import FeedSystem, InvalidFeedSystem

__all__ = [
    "EVENT_MAP",
    "GBFS_VERSION",
    "MDS_MEDIA_TYPE",
    "MDS_VERSION",
    "BadHour",
    "FeedSystem",
    "FleetState",
    "GbfsFeeds",
    "InvalidFeedSystem",
    "MdsProvider",
    "Ride",
    "RideCommand",
    "Station",
    "TripFigures",
    "mds_mode",
    "parse_hour",
    "public_vehicle_ids",
    "rentable",
    "rides_from_commands",
    "rides_preferring_trips",
]
