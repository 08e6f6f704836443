"""Remote commands (lock, unlock, immobilise, ...): the sans-IO command model and state machine.

Built by the remote-commands issue; the device protocol already reserves its MQTT topics.
"""
