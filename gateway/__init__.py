"""Gateway: the IO shell that takes device traffic in (MQTT, CoAP) and feeds the batch pipeline."""
