"""Gateway: the IO shell that takes device traffic in (MQTT, later CoAP) and feeds the batch pipeline."""
