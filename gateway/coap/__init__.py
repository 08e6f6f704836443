"""CoAP ingress for sleeping NB-IoT / LTE-M devices: uplinks into the batch pipeline, answered
2.04 after the commit, commands piggybacked on the response (docs/coap.md)."""

from gateway.coap._auth import TokenVerifier
from gateway.coap._ingress import MEDIA_TYPES, CoapIngress, CommandMailbox

__all__ = ["MEDIA_TYPES", "CoapIngress", "CommandMailbox", "TokenVerifier"]
