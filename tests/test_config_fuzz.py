"""Any config a TOML file can hold either loads or is refused with a ConfigError.

``config.py`` is compiled by mypyc in the installed build (setup.py), and mypyc checks
at run time the types CPython only annotates: a TOML value of the wrong type that
reached a typed field would raise ``TypeError`` there, a traceback instead of the
message naming the key. So a valid config is mutated at random (any key of any table,
known or not, set to any TOML value) and the only outcomes allowed are a ``Config``
or a ``ConfigError``. ``make test`` runs this on both builds.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.config import Config, parse_config
from splice.egress.policy import FORWARD_KEYS as POLICY_FORWARD_KEYS
from splice.egress.policy import POLICY_KEYS
from splice.errors import ConfigError

BASE: dict[str, Any] = {
    "domains": ["shed.example.io"],
    "default_port": 8080,
    "listen": [
        {"address": "127.0.0.1:8081", "mode": "http"},
        {"address": "127.0.0.1:8443", "mode": "tls-passthrough", "accept_proxy": ["127.0.0.1"]},
    ],
    "sheds": {
        "alpha": {
            "address": "127.0.0.2",
            "default_port": 8080,
            "tls_port": 443,
            "ports": [3000, {"port": 9000, "label": "ws"}],
            "max_connections": 10,
            "idle_timeout": 30,
        },
    },
    "resolver": {"chain": ["static", "shed-api"], "shed_server": "http://127.0.0.1:9", "ttl": 5},
    "dial": {"mode": "direct"},
    "forwarded_headers": True,
    "trusted_fronts": ["127.0.0.0/8"],
    "admin": {"address": "127.0.0.1:9090"},
}

#: every key the parser knows, per table, and one it does not
TOP_KEYS = [
    "domains", "default_port", "max_head", "head_timeout", "connect_timeout",
    "retire_timeout", "pipe_pool", "access_log", "listen", "sheds", "resolver", "dial",
    "max_connections", "max_connections_per_shed", "idle_timeout", "idle_timeout_upgraded",
    "drain_timeout", "allow_clients", "forwarded_headers", "forwarded", "trusted_fronts",
    "route_each_request", "upstream_keepalive", "upstream_keepalive_timeout", "forward",
    "workers", "log_format", "admin", "unknown",
]  # fmt: skip
LISTEN_KEYS = [
    "address", "mode", "accept_proxy", "send_proxy", "fallback", "allow_clients", "unknown",
]  # fmt: skip
SHED_KEYS = [
    "address", "default_port", "tls_port", "ports", "dial", "send_proxy", "max_connections",
    "idle_timeout", "unknown",
]  # fmt: skip
RESOLVER_KEYS = [
    "chain", "shed_server", "instances_dir", "ports_dir", "ttl", "negative_ttl", "stale",
    "timeout", "cache_size", "unknown",
]  # fmt: skip
FORWARD_KEYS = [*sorted(POLICY_FORWARD_KEYS), "store", "trust_bundle", "unknown"]
STORE_KEYS = ["path", "mode", "match", "intercept_tls", "ca", "max_bytes", "unknown"]
CLIENT_POLICY_KEYS = [*sorted(POLICY_KEYS), "unknown"]
ADMIN_KEYS = ["address", "unknown"]

#: strings the parser gives meaning to, so mutations reach past the first type check
WORDS = [
    "", "127.0.0.1:80", "[::1]:80", "::1", "0.0.0.0", "127.0.0.1", "10.0.0.0/8", "alpha",
    "http", "tls-passthrough", "forward", "egress-http", "egress-tls", "v1", "v2", "direct",
    "connect", "static", "shed-api", "metadata", "connect-api", "json", "text",
    "http://127.0.0.1:9", "/tmp", "*.example.io", "example.io", "not a name!", "record",
    "replay", "off", "pypi.org", "*.pypi.org:443", "alice",
]  # fmt: skip

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=0, max_value=70_000),  # ports, counts, seconds: mostly valid
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from([*WORDS[:8], "port", "label"]), inner, max_size=3),
    ),
    max_leaves=6,
)


def _table(cfg: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """The table a mutation lands in, made to exist, and the keys it may set there."""
    if where == "listen":
        lst = cfg["listen"] if isinstance(cfg.get("listen"), list) else [{}]
        cfg["listen"] = lst
        if not lst or not isinstance(lst[0], dict):
            lst[:1] = [{}]
        return lst[0], LISTEN_KEYS
    if where == "top":
        return cfg, TOP_KEYS
    key, keys = {
        "shed": ("sheds", SHED_KEYS),
        "resolver": ("resolver", RESOLVER_KEYS),
        "forward": ("forward", FORWARD_KEYS),
        "store": ("forward", STORE_KEYS),
        "policy": ("forward", CLIENT_POLICY_KEYS),
        "admin": ("admin", ADMIN_KEYS),
    }[where]
    if not isinstance(cfg.get(key), dict):
        cfg[key] = {}
    table = cfg[key]
    if where == "shed":
        table = _sub(table, "alpha")
    elif where == "store":
        table = _sub(table, "store")
    elif where == "policy":
        if not isinstance(table.get("policies"), list) or not table["policies"]:
            table["policies"] = [{"clients": ["127.0.0.1"]}]
        if not isinstance(table["policies"][0], dict):
            table["policies"][0] = {}
        table = table["policies"][0]
    return table, keys


def _sub(table: dict[str, Any], key: str) -> dict[str, Any]:
    if not isinstance(table.get(key), dict):
        table[key] = {}
    sub: dict[str, Any] = table[key]
    return sub


mutations = st.lists(
    st.tuples(
        st.sampled_from(
            ["top", "listen", "shed", "resolver", "forward", "store", "policy", "admin"]
        ),
        st.integers(min_value=0, max_value=100),
        values,
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=600, deadline=None)
@given(mutations)
def test_a_mutated_config_loads_or_is_refused_with_a_config_error(
    muts: list[tuple[str, int, Any]],
) -> None:
    cfg = copy.deepcopy(BASE)
    for where, pick, value in muts:
        table, keys = _table(cfg, where)
        table[keys[pick % len(keys)]] = value
    try:
        loaded = parse_config(cfg)
    except ConfigError as e:
        assert str(e)  # names the key and what is wrong
        return
    assert isinstance(loaded, Config)
    for seconds in (loaded.head_timeout, loaded.idle_timeout, loaded.resolver.ttl):
        assert not math.isnan(seconds)


def test_the_base_config_loads() -> None:
    """The fuzz starts from a config that loads: its refusals are the mutations'."""
    assert parse_config(copy.deepcopy(BASE)).sheds["alpha"].policy.tls_port == 443


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        # ipaddress takes an int (5 is 0.0.0.5) and a bool as an int: the fuzz found
        # `accept_proxy = [false]` loading as 0.0.0.0/32
        ("listen", "accept_proxy", [False], "listen[0].accept_proxy[0]: False is not a CIDR"),
        ("top", "trusted_fronts", [3], "trusted_fronts[0]: 3 is not a CIDR"),
        ("shed", "address", 5, "sheds.alpha.address: 5 is not an IP address"),
        ("shed", "address", True, "sheds.alpha.address: True is not an IP address"),
        # a table where a user name goes was looked up in the users: TypeError
        ("policy", "users", [{}], "forward.policies[0].users[0]: {} is not a user"),
        # TOML has inf and nan; neither is a timeout
        ("top", "head_timeout", math.inf, "head_timeout: inf must be a positive number"),
        ("resolver", "stale", math.nan, "resolver.stale: nan must be a positive number"),
    ],
)
def test_values_python_would_coerce_are_refused(
    where: str, key: str, value: Any, message: str
) -> None:
    cfg = copy.deepcopy(BASE)
    table, _ = _table(cfg, where)
    table[key] = value
    with pytest.raises(ConfigError) as e:
        parse_config(cfg)
    assert str(e.value).startswith(message)
