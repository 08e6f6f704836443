"""fleetgate: IoT fleet gateway and telemetry backend for shared e-bikes and cars.

This package is the roof: the CLI, the settings object, the logging setup, the wiring of settings
into each room's configuration and the embedded services of the demo. Nothing below it imports
it; the domain lives in the sibling packages (docs/architecture.md).
"""

__version__ = "0.1.0"
