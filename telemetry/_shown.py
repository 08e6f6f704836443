"""How a value a device sent appears in a rejection's detail: short, and never costlier to write
than the message was to send, whatever the value is.
"""

from __future__ import annotations

from collections.abc import Collection
from fractions import Fraction

import cbor2

_SHOWN_INT_BITS = 128


def shown(value: object, limit: int = 60) -> str:
    """A bounded description of `value` for a log line or a CoAP diagnostic.

    repr() alone will not do for what a device controls: an integer of more than 4,300 digits
    makes repr raise, a list nested a thousand deep makes it recurse past Python's limit, and
    CBOR shared references (tags 28/29) let a few hundred bytes stand for gigabytes of text.
    Containers are therefore described by their size, big integers by their bit length, texts
    cut at `limit` characters; the rest (numbers, dates, decimals, ...) is repr'd and cut.
    """
    kind = type(value)
    if kind is int:
        bits = value.bit_length()
        return repr(value) if bits <= _SHOWN_INT_BITS else f"<an integer of {bits} bits>"
    if kind is str or kind is bytes:
        text = repr(value[:limit])
        return text + "..." if len(value) > limit else text
    if kind is Fraction:
        return f"Fraction({shown(value.numerator)}, {shown(value.denominator)})"
    if kind is cbor2.CBORTag:
        return f"CBORTag({shown(value.tag)}, {shown(value.value, limit)})"[:limit]
    if isinstance(value, Collection):
        return f"<a {kind.__name__} of {len(value)} items>"
    return repr(value)[:limit]
