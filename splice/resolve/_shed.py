"""What every shed-server-backed resolver agrees on: names, statuses, error wording.

A name outside shed-server's grammar can never be a shed, so resolvers answer "not mine"
for it without I/O (and never build a path or URL from it). A shed that exists but is
not running is BackendError SHED_NOT_RUNNING, with a message telling the user how to
start it; a source that cannot be read is BackendError RESOLVER_UNAVAILABLE.
"""

from __future__ import annotations

import ipaddress
import re

from splice.errors import BackendError

#: shed-server's ValidateShedName: ^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$, at most 63 chars
_SHED_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: a status string from a file or the API is shown to users; keep it short and printable
_STATUS_SHOWN = re.compile(r"[a-z_-]{1,20}")


def is_shed_name(name: str) -> bool:
    return _SHED_NAME.fullmatch(name) is not None


def not_running(shed: str, status: str) -> BackendError:
    """SHED_NOT_RUNNING worded for ``status`` (stopped, starting, error, ...)."""
    start = f"Start it with `shed start {shed}`."
    if status == "stopped":
        text = f"Shed {shed!r} is stopped. {start}"
    elif status == "starting":
        text = f"Shed {shed!r} is starting; try again in a few seconds. If it stays down: {start}"
    elif status == "error":
        text = f"Shed {shed!r} is in an error state. {start}"
    else:
        shown = status if _STATUS_SHOWN.fullmatch(status) else "not running"
        text = f"Shed {shed!r} is {shown}. {start}"
    return BackendError(text, code="SHED_NOT_RUNNING", shed=shed)


def unavailable(shed: str | None, why: str) -> BackendError:
    return BackendError(why, code="RESOLVER_UNAVAILABLE", shed=shed)


def running_address(doc: dict[str, object], where: str) -> str | None:
    """The ``ip_address`` of a running shed: an IP literal, or None when absent/empty.

    Raises:
        ValueError: ``ip_address`` is present but not an IP address (``where`` names it).
    """
    ip = doc.get("ip_address")
    if ip is None or ip == "":
        return None
    if not isinstance(ip, str):
        raise ValueError(f"{where}: ip_address is not a string")
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"{where}: ip_address {ip[:64]!r} is not an IP address") from None
    if addr.is_unspecified or addr.is_multicast:  # 0.0.0.0 would dial this host itself
        raise ValueError(f"{where}: ip_address {ip!r} cannot be dialed")
    return str(addr)
