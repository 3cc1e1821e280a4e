"""The one fatal TLS alert splice sends when it cannot route a ClientHello.

``render_alert`` builds a single plaintext alert record; ``alert_for_code`` picks the
description for a splice error code, so a TLS client fails with the nearest
standard reason instead of a bare reset. Unknown codes map to ``internal_error``.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from splice.wire.client_hello import ContentType

# RFC 8446 §5.1 record header, then §6 Alert: type, version, length, level, description.
_ALERT_RECORD = struct.Struct("!BHHBB")


class ProtocolVersion(IntEnum):
    legacy = 0x0303  #: RFC 8446 §5.1: legacy_record_version of every record we send


class AlertLevel(IntEnum):
    fatal = 2  #: RFC 8446 §6


class AlertDescription(IntEnum):
    handshake_failure = 40  #: RFC 8446 §6: no acceptable set of parameters
    access_denied = 49  #: RFC 8446 §6: valid request, but policy refuses it
    internal_error = 80  #: RFC 8446 §6: an error unrelated to the peer
    unrecognized_name = 112  #: RFC 8446 §6 / RFC 6066 §3: no server by that SNI name


#: splice error code -> alert; codes not listed are internal errors.
_ALERT_FOR_CODE: dict[str, AlertDescription] = {
    "UNKNOWN_HOST": AlertDescription.unrecognized_name,
    "SHED_NOT_FOUND": AlertDescription.unrecognized_name,
    "BAD_REQUEST": AlertDescription.unrecognized_name,
    "PORT_NOT_EXPOSED": AlertDescription.handshake_failure,
    "INVALID_PORT": AlertDescription.handshake_failure,
    "DESTINATION_DENIED": AlertDescription.access_denied,
    "PORT_DENIED": AlertDescription.access_denied,
    "PRIVATE_ADDRESS": AlertDescription.access_denied,
    "TUNNEL_NOT_REPLAYABLE": AlertDescription.access_denied,
    # egress-tls with proxy users: a transparent client cannot authenticate
    "PROXY_AUTH_REQUIRED": AlertDescription.access_denied,
}


def render_alert(desc: AlertDescription) -> bytes:
    """One fatal alert record: type 21, version 0x0303, length 2, level, description."""
    return _ALERT_RECORD.pack(ContentType.alert, ProtocolVersion.legacy, 2, AlertLevel.fatal, desc)


def alert_for_code(code: str) -> AlertDescription:
    return _ALERT_FOR_CODE.get(code, AlertDescription.internal_error)
