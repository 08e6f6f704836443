"""fleetgate: IoT fleet gateway and telemetry backend for shared e-bikes and cars.

This package holds what the rooms share: the CLI, the settings object, logging, the MQTT wire
protocol and the embedded services of the demo. The domain lives in the sibling packages.
"""

__version__ = "0.1.0"
