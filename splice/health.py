"""Readiness (``/readyz``) and reachability (``splice check --reach``).

Ready means: every listener is bound, and the resolver can answer. A chain of
static resolvers only always can. Otherwise a fresh cache entry (an address younger
than ``ttl``) is enough; failing that, shed-server must answer ``GET /api/info``
(for ``shed-api``) or the instances directory must exist (for ``metadata``).
The answer is ``(ok, text)``; the text says what was checked, one line per check.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from splice.config import Config
from splice.errors import SpliceError
from splice.resolve.base import Endpoint
from splice.resolve.shed_api import ShedApiResolver

if TYPE_CHECKING:
    from splice.server import Server


async def readiness(server: Server) -> tuple[bool, str]:
    ctx = server.ctx
    if ctx is None or not server.listeners or any(li.sock.fileno() < 0 for li in server.listeners):
        return False, "listeners: not bound"
    bound = ", ".join(f"{h}:{p}" for h, p in server.addresses)
    ok, why = await resolver_ready(server)
    return ok, f"listeners: bound ({bound})\nresolver: {why}"


async def resolver_ready(server: Server) -> tuple[bool, str]:
    assert server.ctx is not None
    chain, cfg = server.ctx.chain, server.cfg
    dynamic = [r for r in chain.resolvers if not r.synchronous]
    if not dynamic:
        return True, "static only"
    fresh = sum(
        1 for _, answer, age in chain.entries()
        if isinstance(answer, Endpoint) and age < cfg.resolver.ttl
    )  # fmt: skip
    if fresh:
        return True, f"{fresh} fresh cache entries"
    problems = []
    for r in dynamic:
        if isinstance(r, ShedApiResolver):
            try:
                await r.info()
            except SpliceError as e:
                problems.append(f"shed-api: {e.message} ({cfg.resolver.shed_server})")
                continue
            return True, f"shed-server at {cfg.resolver.shed_server} answers"
        if r.kind == "metadata":
            if os.path.isdir(cfg.resolver.instances_dir):
                return True, f"instances directory {cfg.resolver.instances_dir} exists"
            problems.append(f"metadata: no directory {cfg.resolver.instances_dir}")
    return False, "; ".join(problems) or "no resolver can answer"


def needs_shed_server(cfg: Config) -> bool:
    """Whether this config talks to shed-server (shed-api resolver or Connect API dial)."""
    dials = {cfg.dial} | {sc.dial for sc in cfg.sheds.values() if sc.dial}
    return "shed-api" in cfg.resolver.chain or "connect" in dials


async def reach_shed_server(cfg: Config) -> tuple[bool, str]:
    """Ask the configured shed-server for ``/api/info``: (reachable, what it said)."""
    url = cfg.resolver.shed_server
    api = ShedApiResolver(url, timeout=cfg.resolver.timeout)
    try:
        info = await api.info()
    except SpliceError as e:
        return False, f"splice: {e.message} Check [resolver] shed_server ({url})."
    finally:
        await api.close()
    about = ", ".join(f"{k} {info[k]}" for k in ("name", "version", "backend") if k in info)
    return True, f"shed-server at {url} answers ({about or 'no details'})"
