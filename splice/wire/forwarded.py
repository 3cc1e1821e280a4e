"""X-Forwarded-* and Forwarded (RFC 7239) in a request head, rewritten once.

The VM learns the real client only from these fields, so a client must not be able
to forge them: copies that arrive from an untrusted peer are removed and ours are
appended. From a trusted front (Caddy, nginx) the fields it set are kept as they are.
Only the head is touched; the body is never read.
"""

from __future__ import annotations

import re
from typing import Final

#: what the VM may take as the client's address, scheme, host, port or path prefix: the
#: fields we set (X-Forwarded-For/-Proto/-Host, Forwarded) and the ones frameworks read
#: beside them (X-Forwarded-Port/-Prefix, X-Real-IP), which a client must not set either
_TRUSTED_NAMES: Final = (
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
    b"x-real-ip",
    b"forwarded",
)


def _spellings(name: bytes) -> list[bytes]:
    """``name`` with each "-" also as "_": CGI, WSGI and PHP turn both into "_", so
    ``X_Forwarded_For`` reaches an app as the same variable as our X-Forwarded-For
    (and ahead of it, where "the leftmost address" is the client)."""
    first, *rest = name.split(b"-")
    out = [first]
    for part in rest:
        out = [o + sep + part for o in out for sep in (b"-", b"_")]
    return out


#: the forwarding fields in every spelling, lower-case: removed from an untrusted
#: client's head
FORWARDING_FIELDS: Final[tuple[bytes, ...]] = tuple(
    s for name in _TRUSTED_NAMES for s in _spellings(name)
)
# field-line at a line start: "\r\n" field-name ":" ... up to the next CR
_FORWARDED_LINE: Final = re.compile(
    rb"\r\n(?:" + b"|".join(FORWARDING_FIELDS) + rb")[ \t]*:[^\r]*", re.IGNORECASE
)


def rewrite_forwarded(
    raw: bytes,
    client: str,
    host: bytes,
    proto: bytes,
    *,
    rfc7239: bool = False,
    present: bool = True,
) -> bytes:
    """``raw`` (a complete head ending in CRLF CRLF) with our forwarding fields.

    ``host`` is the Host the client asked for; control bytes never reach it since
    the head scanner has validated every field value already. ``present=False``:
    the parser found no forwarding field in ``raw``, so there is none to remove.
    """
    head = _FORWARDED_LINE.sub(b"", raw[:-2]) if present else raw[:-2]
    ip = client.encode()
    extra = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n" % (
        ip,
        proto,
        host,
    )
    if rfc7239:
        node = b'"[%s]"' % ip if b":" in ip else ip
        extra += b'Forwarded: for=%s;proto=%s;host="%s"\r\n' % (node, proto, host)
    return head + extra + b"\r\n"
