"""MQTT 3.1.1/5 wire protocol: a sans-IO codec and a lean asyncio client with manual acknowledgement."""
