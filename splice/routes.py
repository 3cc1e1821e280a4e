"""The ``/routes`` document of a running server, its human table, and a client for it.

``routes_doc(server)`` is plain JSON: the listeners actually bound, the configured
sheds (address, default and TLS ports, declared ports, dial mode), and the resolver
cache (each shed's answer or error code, its source, age and effective declared
ports, config plus ``ports_dir``). ``merge_routes`` joins workers' documents (one
config; each worker has its own cache: the freshest answer per shed wins).
``fetch`` is a blocking h11 GET for ``splice routes``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import h11

from splice.resolve.base import Endpoint
from splice.routing.policy import DeclaredPort

if TYPE_CHECKING:  # ``splice routes`` needs only the client half; keep its import light
    from splice.server import Server

#: the /routes answer of a host with thousands of cached sheds is well under this
MAX_BODY = 16 << 20


def _ports(ports: Sequence[DeclaredPort]) -> list[dict[str, Any]]:
    return [{"port": d.port, "label": d.label} for d in ports]


def routes_doc(server: Server) -> dict[str, Any]:
    ctx, cfg = server.ctx, server.cfg
    assert ctx is not None
    sheds = []
    for name, sc in sorted(cfg.sheds.items()):
        default = sc.policy.default_port or cfg.default_port
        sheds.append(
            {
                "name": name,
                "address": sc.address,
                "default_port": default,
                "tls_port": sc.policy.default_tls_port(),
                "ports": _ports(ctx.policy(name).ports),
                "dial": ctx.dial_mode(name),
            }
        )
    cache = []
    for name, answer, age in ctx.chain.entries():
        entry: dict[str, Any] = {"shed": name, "age": round(age, 3)}
        if isinstance(answer, Endpoint):
            entry.update(address=answer.address, source=answer.source, status=answer.status)
        else:
            entry.update(error=answer)
        entry["ports"] = _ports(ctx.policy(name).ports)
        cache.append(entry)
    return {
        "domains": list(cfg.domains),
        "default_port": cfg.default_port,
        "listen": [
            {"address": _hostport(h, p), "mode": li.config.mode}
            for li, (h, p) in zip(server.listeners, server.addresses, strict=True)
        ],
        "resolvers": list(cfg.resolver.chain),
        "dial": cfg.dial,
        "sheds": sheds,
        "cache": cache,
    }


def merge_routes(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One document from several workers': the first one's config, the freshest cache."""
    out = dict(docs[0])
    fresh: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for entry in doc["cache"]:
            seen = fresh.get(entry["shed"])
            if seen is None or entry["age"] < seen["age"]:
                fresh[entry["shed"]] = entry
    out["cache"] = [fresh[k] for k in sorted(fresh)]
    return out


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_list(ports: Sequence[dict[str, Any]]) -> str:
    text = ", ".join(f"{p['port']} ({p['label']})" if p["label"] else str(p["port"]) for p in ports)
    return text or "any"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]


def format_routes(doc: dict[str, Any]) -> str:
    """The document as a human reads it: a summary, a shed table and a cache table."""
    lines = [
        f"domains: {', '.join(doc['domains'])}   default port: {doc['default_port']}",
        "listen: " + ", ".join(f"{li['address']} ({li['mode']})" for li in doc["listen"]),
        f"resolvers: {' -> '.join(doc['resolvers'])}   dial: {doc['dial']}",
        "",
    ]
    rows = [
        [s["name"], s["address"] or "(resolved)", str(s["default_port"]), str(s["tls_port"]),
         _port_list(s["ports"]), s["dial"]]
        for s in doc["sheds"]
    ]  # fmt: skip
    lines += _table(["SHED", "ADDRESS", "PORT", "TLS", "PORTS", "DIAL"], rows)
    lines.append("")
    cached = [
        [e["shed"], e.get("address") or e.get("error") or "(connect api)",
         e.get("source", "-"), f"{e['age']:.1f}s", _port_list(e["ports"])]
        for e in doc["cache"]
    ]  # fmt: skip
    if cached:
        lines += _table(["CACHED", "ANSWER", "SOURCE", "AGE", "PORTS"], cached)
    else:
        lines.append("resolver cache: empty")
    return "\n".join(lines)


def fetch(
    host: str, port: int, target: str, timeout: float = 5.0, token: str | None = None
) -> tuple[int, bytes]:
    """A blocking GET on an admin listener (with ``token`` as its bearer): (status, body)."""
    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        headers = [("Host", _hostport(host, port)), ("Connection", "close")]
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        sock.sendall(conn.send(h11.Request(method="GET", target=target, headers=headers)))
        sock.sendall(conn.send(h11.EndOfMessage()))
        status, body = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("answer too large")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, bytes(body)


def fetch_routes(host: str, port: int, token: str | None = None) -> dict[str, Any]:
    """GET /routes from a running splice. Raises OSError, ValueError, h11.ProtocolError."""
    status, body = fetch(host, port, "/routes", token=token)
    if status != 200:
        why = body.decode("utf-8", "replace").partition("\n")[0][:200]
        raise ValueError(f"/routes answered HTTP {status}: {why}")
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError("/routes did not answer a JSON object")
    return doc
