"""A request -> its store key: the parts named by ``match``, canonical, then SHA-256.

Pure: no I/O. The URL is normalised the way the proxy routes it: scheme and host
lower-cased (the host in ``splice.egress.authority``'s one spelling), the scheme's
default port dropped, the path and query kept exactly as sent (``?b=1&a=2`` and
``?a=2&b=1`` are different keys). The body counts as its SHA-256, a ``header:NAME``
as all of that field's values joined by ", " (absent is not the same as empty).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from splice.egress.authority import parse_authority
from splice.errors import ProtocolError

#: the port a scheme implies; written out it is dropped from the key's URL
DEFAULT_PORTS = {"http": 80, "https": 443}
#: absolute-form: scheme "://" authority, then path and query as sent
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
#: bump when the key material changes shape, so old stores miss instead of mismatching
KEY_VERSION = 1


def split_absolute(target: bytes) -> tuple[str, str, int, str]:
    """``http://Host:80/p?q`` -> ("http", "host", 80, "/p?q"). Raises ProtocolError."""
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        raise ProtocolError("a proxy request needs an absolute URL such as http://host/path")
    scheme = m[1].decode("ascii").lower()
    if scheme not in DEFAULT_PORTS:
        raise ProtocolError(f"the URL scheme {scheme!r} cannot be proxied")
    host, port = parse_authority(m[2], DEFAULT_PORTS[scheme])
    return scheme, host, port, m[3].decode("latin-1")


def normalise_url(scheme: str, host: str, port: int, target: str) -> str:
    """The canonical absolute URL; ``host`` is already canonical (parse_authority)."""
    scheme = scheme.lower()
    shown = f"[{host}]" if ":" in host else host
    if port != DEFAULT_PORTS.get(scheme):
        shown += f":{port}"
    if not target.startswith("/"):
        target = "/" + target
    return f"{scheme}://{shown}{target}"


def header_value(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """All values of field ``name`` (case-insensitive) joined by ", "; None when absent."""
    wanted = name.lower().encode("latin-1")
    values = [v.decode("latin-1") for k, v in headers if k.lower() == wanted]
    return ", ".join(values) if values else None


def key_material(
    match: Sequence[str],
    *,
    method: str,
    url: str,
    body_sha256: str,
    headers: Iterable[tuple[bytes, bytes]],
) -> dict[str, Any]:
    """The parts of the request that ``match`` names, in a JSON-able dict."""
    fields = list(headers)
    material: dict[str, Any] = {"v": KEY_VERSION}
    for part in match:
        if part == "method":
            # as it came: methods are case-sensitive (RFC 9110 §9.1), ``get`` is not GET
            material["method"] = method
        elif part == "url":
            material["url"] = url
        elif part == "body":
            material["body"] = body_sha256
        else:
            name = part.partition(":")[2]
            material[part] = header_value(fields, name)
    return material


def key_of(material: dict[str, Any]) -> str:
    """The key: SHA-256 (hex) of the material's canonical JSON."""
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def request_key(
    match: Sequence[str],
    *,
    method: str,
    url: str,
    body_sha256: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> str:
    """``key_of(key_material(...))``: the one call the proxy needs."""
    material = key_material(match, method=method, url=url, body_sha256=body_sha256, headers=headers)
    return key_of(material)
