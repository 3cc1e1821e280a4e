"""The config file (TOML) -> a frozen ``Config``; every error names its key.

Unknown keys are errors, not warnings: a misspelt ``defualt_port`` silently
ignored would route to the wrong port. Defaults live here, once, and the README's
configuration reference lists the same values.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from splice.config_ops import OPS_KEYS, AdminConfig, parse_ops
from splice.egress.policy import ForwardPolicy, parse_forward_section
from splice.errors import ConfigError
from splice.routing.names import is_shed_name
from splice.routing.policy import DeclaredPort, ShedPolicy
from splice.store.settings import StoreSettings, parse_store_section

#: shed's own convention: the service a shed runs by default listens on 8080
DEFAULT_PORT: Final = 8080
#: h11 uses 16 KiB; browsers with large cookies exceed that, nginx allows 4 x 8 KiB
#: per line. 64 KiB admits every real browser head; bigger gets 431.
MAX_HEAD: Final = 64 * 1024
#: long enough for a phone on a bad link, short enough to shed slowloris
HEAD_TIMEOUT: Final = 10.0
#: a VM on the host bridge answers a SYN in well under a millisecond; 5 s means it is gone
CONNECT_TIMEOUT: Final = 5.0
#: how long a retired upstream may take to finish its last response before it is cut
RETIRE_TIMEOUT: Final = 5.0
#: pipes kept for splicing; each pair is 2 fds and only held while bytes are in flight
PIPE_POOL: Final = 256
#: a keep-alive or spliced connection with no byte either way this long is closed;
#: long enough for any human pause, short enough that abandoned tabs don't pile up
IDLE_TIMEOUT: Final = 600.0
#: idle keep-alive connections kept per shed port for requests whose client closes
UPSTREAM_KEEPALIVE: Final = 32
#: an idle upstream connection older than this is closed: under the 5 s keep-alive
#: timeout of Node.js and uvicorn, so a reuse rarely races the VM's own close
UPSTREAM_KEEPALIVE_TIMEOUT: Final = 3.0
#: seconds in-flight connections get to finish at SIGTERM
DRAIN_TIMEOUT: Final = 10.0
#: ``frame_responses`` values
FRAME_RESPONSES: Final = ("fronts", "all")

LISTEN_MODES: Final[tuple[str, ...]] = (
    "http",
    "tls-passthrough",
    "forward",
    "egress-http",
    "egress-tls",
)
#: listener modes that dial destinations chosen by the client, under ``[forward]`` policy
EGRESS_MODES: Final[tuple[str, ...]] = ("forward", "egress-http", "egress-tls")
#: ``[forward]`` keys that belong to other features, not to the destination policy
_FORWARD_EXTRA: Final[tuple[str, ...]] = ("store", "trust_bundle")
DIAL_MODES: Final[tuple[str, ...]] = ("direct", "connect")
RESOLVERS: Final[tuple[str, ...]] = ("static", "shed-api", "metadata")
PROXY_VERSIONS: Final[tuple[str, ...]] = ("v1", "v2")


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str
    port: int
    mode: str = "http"
    accept_proxy: tuple[str, ...] = ()
    send_proxy: str | None = None
    fallback: str | None = None
    #: CIDRs allowed to connect; None: the top-level ``allow_clients``
    allow_clients: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ShedConfig:
    name: str
    address: str | None = None
    policy: ShedPolicy = field(default_factory=ShedPolicy)
    dial: str | None = None
    send_proxy: str | None = None
    #: concurrent upstream connections to this shed; 0: the global per-shed limit
    max_connections: int = 0
    #: seconds without traffic before closing; None: the global defaults
    idle_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    chain: tuple[str, ...] = ("static",)
    shed_server: str = "http://127.0.0.1:8080"
    instances_dir: str = "/var/lib/shed/instances"
    ports_dir: str | None = None
    ttl: float = 5.0
    negative_ttl: float = 1.0
    stale: float = 60.0
    timeout: float = 2.0
    cache_size: int = 4096


@dataclass(frozen=True, slots=True)
class Config:
    domains: tuple[str, ...]
    listen: tuple[ListenConfig, ...]
    sheds: Mapping[str, ShedConfig]
    default_port: int = DEFAULT_PORT
    max_head: int = MAX_HEAD
    head_timeout: float = HEAD_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    retire_timeout: float = RETIRE_TIMEOUT
    pipe_pool: int = PIPE_POOL
    access_log: bool = True
    dial: str = "direct"
    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    #: concurrent client connections; 0: no limit beyond the fd budget
    max_connections: int = 0
    #: concurrent upstream connections per shed; 0: no limit
    max_connections_per_shed: int = 0
    idle_timeout: float = IDLE_TIMEOUT
    #: idle timeout after an Upgrade (WebSocket, shed-tcp); 0: never
    idle_timeout_upgraded: float = 0.0
    drain_timeout: float = DRAIN_TIMEOUT
    #: CIDRs allowed to connect at all (checked before a byte is read); empty: everyone
    allow_clients: tuple[str, ...] = ()
    #: set X-Forwarded-For/-Proto/-Host (replacing incoming copies from untrusted peers,
    #: with every spelling of the forwarding fields: ``wire/forwarded.py``)
    forwarded_headers: bool = True
    #: also set RFC 7239 ``Forwarded``
    forwarded: bool = False
    #: peers whose X-Forwarded-* / Forwarded headers are kept (Caddy, nginx fronts)
    trusted_fronts: tuple[str, ...] = ()
    #: false: route only a connection's first request and splice the rest blind
    #: (the v0.1 behaviour, kept for benchmarks; unsafe behind a front that pools)
    route_each_request: bool = True
    #: whose keep-alive connections have every response framed, so that bytes a VM
    #: sends past its answers never reach the client: "all", or "fronts" (only
    #: ``trusted_fronts``, which may pool one connection across sheds; the others are
    #: relayed blind, which lets answers HTTP cannot frame through)
    frame_responses: str = "all"
    #: idle upstream connections kept per (shed, port) for the next ``Connection: close``
    #: request; 0 turns upstream keep-alive off
    upstream_keepalive: int = UPSTREAM_KEEPALIVE
    upstream_keepalive_timeout: float = UPSTREAM_KEEPALIVE_TIMEOUT
    #: the egress gateway's destination policy; present when ``[forward]`` is given or
    #: an egress listener exists (then with the defaults: any public host, ports 80/443)
    forward: ForwardPolicy | None = None
    #: ``[forward.store]``: the record/replay store (mode "off" unless configured)
    store: StoreSettings = field(default_factory=StoreSettings)
    #: ``[forward] trust_bundle``: CA file for verifying origins when TLS is intercepted
    trust_bundle: str | None = None
    #: worker processes sharing each listener (SO_REUSEPORT); 1: no supervisor. A
    #: config file without the key gets one per core (``config_ops.WORKERS``); 1 here
    #: is only the default of a Config built in code
    workers: int = 1
    #: "text" or "json", for the log and the access log
    log_format: str = "text"
    #: the admin listener (/healthz, /readyz, /metrics, /routes, /reload); None: none
    admin: AdminConfig | None = None

    def policy(self, shed: str) -> ShedPolicy:
        sc = self.sheds.get(shed)
        return sc.policy if sc is not None else _OPEN


_OPEN: Final = ShedPolicy()
_TOP_KEYS: Final = {
    "domains", "default_port", "max_head", "head_timeout", "connect_timeout",
    "retire_timeout", "pipe_pool", "access_log", "listen", "sheds", "resolver", "dial",
    "max_connections", "max_connections_per_shed", "idle_timeout", "idle_timeout_upgraded",
    "drain_timeout", "allow_clients", "forwarded_headers", "forwarded", "trusted_fronts",
    "route_each_request", "frame_responses", "upstream_keepalive", "upstream_keepalive_timeout",
    "forward",
    *OPS_KEYS,
}  # fmt: skip


#: what a reload cannot change: the process set it up at start (log_format too, but a
#: command-line flag may have chosen it, so a file that says otherwise is no news)
FIXED_AT_START: Final = ("workers", "access_log", "pipe_pool", "admin")


def fixed_at_start(old: Config, new: Config) -> list[str]:
    """The settings ``new`` changes that take effect only at the next start."""
    return [key for key in FIXED_AT_START if getattr(old, key) != getattr(new, key)]


def load_config(path: str) -> Config:
    """Read and validate a TOML file. Raises ConfigError naming the bad key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("", f"{path} is not valid TOML: {e}") from None
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> Config:
    _no_unknown("", data, _TOP_KEYS)
    domains = tuple(_domain(f"domains[{i}]", d) for i, d in enumerate(_list(data, "domains")))
    listen = tuple(_listen(f"listen[{i}]", v) for i, v in enumerate(_list(data, "listen")))
    if not listen:
        raise ConfigError("listen", "give at least one [[listen]] table with an address")
    if not domains and any(lc.mode not in EGRESS_MODES for lc in listen):
        raise ConfigError("domains", "give at least one base domain, e.g. ['srv.example.io']")
    sheds_raw = data.get("sheds", {})
    if not isinstance(sheds_raw, dict):
        raise ConfigError("sheds", "must be a table of [sheds.NAME] tables")
    sheds = {name: _shed(name, v) for name, v in sheds_raw.items()}
    dial_raw = data.get("dial", {})
    if not isinstance(dial_raw, dict):
        raise ConfigError("dial", "must be a table")
    _no_unknown("dial", dial_raw, {"mode"})
    cfg = Config(
        domains=domains,
        listen=listen,
        sheds=sheds,
        default_port=_port("default_port", data.get("default_port", DEFAULT_PORT)),
        max_head=_int("max_head", data.get("max_head", MAX_HEAD), 1024, 1 << 20),
        head_timeout=_seconds("head_timeout", data.get("head_timeout", HEAD_TIMEOUT)),
        connect_timeout=_seconds("connect_timeout", data.get("connect_timeout", CONNECT_TIMEOUT)),
        retire_timeout=_seconds("retire_timeout", data.get("retire_timeout", RETIRE_TIMEOUT)),
        pipe_pool=_int("pipe_pool", data.get("pipe_pool", PIPE_POOL), 0, 65536),
        access_log=_bool("access_log", data.get("access_log", True)),
        dial=_choice("dial.mode", dial_raw.get("mode", "direct"), DIAL_MODES),
        resolver=_resolver(data.get("resolver", {})),
        max_connections=_int("max_connections", data.get("max_connections", 0), 0, 1 << 24),
        max_connections_per_shed=_int(
            "max_connections_per_shed", data.get("max_connections_per_shed", 0), 0, 1 << 24
        ),
        idle_timeout=_seconds("idle_timeout", data.get("idle_timeout", IDLE_TIMEOUT), True),
        idle_timeout_upgraded=_seconds(
            "idle_timeout_upgraded", data.get("idle_timeout_upgraded", 0.0), zero_ok=True
        ),
        drain_timeout=_seconds("drain_timeout", data.get("drain_timeout", DRAIN_TIMEOUT), True),
        allow_clients=_cidrs("allow_clients", data),
        forwarded_headers=_bool("forwarded_headers", data.get("forwarded_headers", True)),
        forwarded=_bool("forwarded", data.get("forwarded", False)),
        trusted_fronts=_cidrs("trusted_fronts", data),
        route_each_request=_bool("route_each_request", data.get("route_each_request", True)),
        frame_responses=_choice(
            "frame_responses", data.get("frame_responses", "all"), FRAME_RESPONSES
        ),
        upstream_keepalive=_int(
            "upstream_keepalive", data.get("upstream_keepalive", UPSTREAM_KEEPALIVE), 0, 65536
        ),
        upstream_keepalive_timeout=_seconds(
            "upstream_keepalive_timeout",
            data.get("upstream_keepalive_timeout", UPSTREAM_KEEPALIVE_TIMEOUT),
        ),
        **_forward(data, listen),
        **parse_ops(data),
    )
    for lc in cfg.listen:
        if (
            lc.fallback is not None
            and lc.fallback not in sheds
            and cfg.resolver.chain == ("static",)
        ):
            raise ConfigError("listen.fallback", f"no shed named {lc.fallback!r}")
    return cfg


def _forward(data: Mapping[str, Any], listen: tuple[ListenConfig, ...]) -> dict[str, Any]:
    raw = data.get("forward")
    if raw is None and not any(lc.mode in EGRESS_MODES for lc in listen):
        return {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("forward", "must be a table")
    policy = {k: v for k, v in raw.items() if k not in _FORWARD_EXTRA}
    bundle = raw.get("trust_bundle")
    if bundle is not None and not (isinstance(bundle, str) and bundle):
        raise ConfigError("forward.trust_bundle", "must be the path of a PEM file")
    return {
        "forward": parse_forward_section(policy),
        "store": parse_store_section(raw.get("store", {})),
        "trust_bundle": bundle,
    }


def _listen(key: str, v: Any) -> ListenConfig:
    if not isinstance(v, dict):
        raise ConfigError(key, "must be a table")
    _no_unknown(
        key, v, {"address", "mode", "accept_proxy", "send_proxy", "fallback", "allow_clients"}
    )
    if "address" not in v:
        raise ConfigError(f"{key}.address", "missing; give host:port, e.g. '127.0.0.1:8081'")
    host, port = parse_address(f"{key}.address", v["address"])
    fallback = v.get("fallback")
    if fallback is not None and not (isinstance(fallback, str) and is_shed_name(fallback)):
        raise ConfigError(f"{key}.fallback", "must be a shed name")
    accept = _cidrs("accept_proxy", v, key)
    return ListenConfig(
        host=host,
        port=port,
        mode=_choice(f"{key}.mode", v.get("mode", "http"), LISTEN_MODES),
        accept_proxy=accept,
        send_proxy=_opt_choice(f"{key}.send_proxy", v.get("send_proxy"), PROXY_VERSIONS),
        fallback=fallback,
        allow_clients=_cidrs("allow_clients", v, key) if "allow_clients" in v else None,
    )


def _shed(name: str, v: Any) -> ShedConfig:
    key = f"sheds.{name}"
    if not is_shed_name(name):
        raise ConfigError(key, "not a valid shed name (a-z, 0-9, '-', starts with a letter)")
    if not isinstance(v, dict):
        raise ConfigError(key, "must be a table")
    allowed = {
        "address", "default_port", "tls_port", "ports", "dial", "send_proxy",
        "max_connections", "idle_timeout",
    }  # fmt: skip
    _no_unknown(key, v, allowed)
    address = v.get("address")
    if address is not None:
        address = _ip(f"{key}.address", address)
    ports = tuple(_declared(f"{key}.ports[{i}]", p) for i, p in enumerate(_list(v, "ports", key)))
    default = v.get("default_port")
    tls = v.get("tls_port")
    policy = ShedPolicy(
        default_port=None if default is None else _port(f"{key}.default_port", default),
        tls_port=None if tls is None else _port(f"{key}.tls_port", tls),
        ports=ports,
    )
    return ShedConfig(
        name=name,
        address=address,
        policy=policy,
        dial=_opt_choice(f"{key}.dial", v.get("dial"), DIAL_MODES),
        send_proxy=_opt_choice(f"{key}.send_proxy", v.get("send_proxy"), PROXY_VERSIONS),
        max_connections=_int(f"{key}.max_connections", v.get("max_connections", 0), 0, 1 << 24),
        idle_timeout=None
        if v.get("idle_timeout") is None
        else _seconds(f"{key}.idle_timeout", v["idle_timeout"], zero_ok=True),
    )


def _declared(key: str, v: Any) -> DeclaredPort:
    if isinstance(v, int) and not isinstance(v, bool):
        return DeclaredPort(_port(key, v))
    if not isinstance(v, dict):
        raise ConfigError(key, "must be a port number or {port = N, label = '...'}")
    _no_unknown(key, v, {"port", "label"})
    if "port" not in v:
        raise ConfigError(f"{key}.port", "missing")
    label = v.get("label", "")
    if not isinstance(label, str):
        raise ConfigError(f"{key}.label", "must be a string")
    return DeclaredPort(_port(f"{key}.port", v["port"]), label)


def _resolver(v: Any) -> ResolverConfig:
    if not isinstance(v, dict):
        raise ConfigError("resolver", "must be a table")
    allowed = {
        "chain", "shed_server", "instances_dir", "ports_dir", "ttl", "negative_ttl",
        "stale", "timeout", "cache_size",
    }  # fmt: skip
    _no_unknown("resolver", v, allowed)
    chain = tuple(
        _choice(f"resolver.chain[{i}]", c, RESOLVERS)
        for i, c in enumerate(_list(v, "chain", "resolver") or ["static"])
    )
    d = ResolverConfig()
    server = v.get("shed_server", d.shed_server)
    if not (isinstance(server, str) and server.startswith("http://")):
        raise ConfigError(
            "resolver.shed_server", "must be an http:// URL, e.g. http://127.0.0.1:8080"
        )
    try:
        url = urlsplit(server)
        bad = not url.hostname or url.port == 0  # .port raises on a port out of range
    except ValueError:
        bad = True
    if bad:
        raise ConfigError(
            "resolver.shed_server", f"{server!r} is not a usable http://HOST[:PORT] URL"
        )
    return ResolverConfig(
        chain=chain,
        shed_server=server.rstrip("/"),
        instances_dir=_str("resolver.instances_dir", v.get("instances_dir", d.instances_dir)),
        ports_dir=None
        if v.get("ports_dir") is None
        else _str("resolver.ports_dir", v["ports_dir"]),
        ttl=_seconds("resolver.ttl", v.get("ttl", d.ttl)),
        negative_ttl=_seconds("resolver.negative_ttl", v.get("negative_ttl", d.negative_ttl)),
        stale=_seconds("resolver.stale", v.get("stale", d.stale), zero_ok=True),
        timeout=_seconds("resolver.timeout", v.get("timeout", d.timeout)),
        cache_size=_int("resolver.cache_size", v.get("cache_size", d.cache_size), 1, 1 << 20),
    )


def parse_address(key: str, v: Any) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); the host must be an IP literal."""
    if not isinstance(v, str) or ":" not in v:
        raise ConfigError(key, "must be 'host:port' or '[v6]:port'")
    host, _, port_s = v.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_s.isdigit():
        raise ConfigError(key, f"port {port_s!r} is not a number")
    return _ip(key, host), _port(key, int(port_s), zero_ok=True)


def _no_unknown(key: str, v: Mapping[str, Any], allowed: set[str]) -> None:
    for k in v:
        if k not in allowed:
            where = f"{key}.{k}" if key else k
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(allowed))})")


def _list(v: Mapping[str, Any], k: str, key: str = "") -> list[Any]:
    x = v.get(k, [])
    if not isinstance(x, list):
        raise ConfigError(f"{key}.{k}" if key else k, "must be a list")
    return x


def _domain(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip("."):
        raise ConfigError(key, "must be a domain name such as 'srv.example.io'")
    d = v.lower().rstrip(".")
    if any(not part or len(part) > 63 for part in d.split(".")) or " " in d:
        raise ConfigError(key, f"{v!r} is not a valid domain name")
    return d


def _ip(key: str, v: Any) -> str:
    # a string only: ipaddress also takes an int (5 is 0.0.0.5), and a bool as an int
    try:
        if isinstance(v, str):
            return str(ipaddress.ip_address(v))
    except ValueError:
        pass
    raise ConfigError(key, f"{v!r} is not an IP address")


def _cidrs(k: str, v: Mapping[str, Any], key: str = "") -> tuple[str, ...]:
    where = f"{key}.{k}" if key else k
    return tuple(_cidr(f"{where}[{i}]", c) for i, c in enumerate(_list(v, k, key)))


def _cidr(key: str, v: Any) -> str:
    try:
        if isinstance(v, str):  # as in _ip: no int or bool taken for an address
            return str(ipaddress.ip_network(v, strict=False))
    except ValueError:
        pass
    raise ConfigError(key, f"{v!r} is not a CIDR such as '127.0.0.1/32'")


def _port(key: str, v: Any, zero_ok: bool = False) -> int:
    lo = 0 if zero_ok else 1
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= 65535:
        raise ConfigError(key, f"{v!r} is not a port number ({lo}-65535)")
    return v


def _int(key: str, v: Any, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ConfigError(key, f"{v!r} must be an integer from {lo} to {hi}")
    return v


def _seconds(key: str, v: Any, zero_ok: bool = False) -> float:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and (v >= 0 if zero_ok else v > 0)
    if not ok or not math.isfinite(v):  # TOML has inf and nan
        raise ConfigError(key, f"{v!r} must be a positive number of seconds")
    return float(v)


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(key, "must be true or false")
    return v


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(key, "must be a non-empty string")
    return v


def _choice(key: str, v: Any, options: tuple[str, ...]) -> str:
    if v not in options:
        raise ConfigError(key, f"{v!r} is not one of {', '.join(options)}")
    return str(v)


def _opt_choice(key: str, v: Any, options: tuple[str, ...]) -> str | None:
    return None if v is None else _choice(key, v, options)
