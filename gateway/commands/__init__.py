"""The commands' IO shell around the sans-IO core in commands/: the PostgreSQL store, the MQTT
link to the devices, and CommandService, which runs the dispatcher and implements the ports the
HTTP API uses (commands.ports), composed of one module per job (memory, commit, submission,
results, dispatch, delivery). docs/commands.md explains the guarantees.
"""

from gateway.commands.config import CommandConfig
from gateway.commands.metrics import CommandMetrics
from gateway.commands.mqtt import CommandLink, InboundResult, command_client_id
from gateway.commands.reads import CommandReads
from gateway.commands.service import CommandService
from gateway.commands.store import CommandConflict, CommandStore, VehicleInfo

__all__ = [
    "CommandConfig",
    "CommandConflict",
    "CommandLink",
    "CommandMetrics",
    "CommandReads",
    "CommandService",
    "CommandStore",
    "InboundResult",
    "VehicleInfo",
    "command_client_id",
]
