"""/metrics: the Prometheus exposition of snapshots, ``merge``, and counters moving with traffic.

Unit tests feed ``Metrics`` snapshots to ``merge`` and ``render`` and read the text
back with prometheus_client's parser; the integration tests scrape a running splice
after real connections on loopback.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hellos import real_hello
from ops_support import OpsSplice, ShedServerThread, parse_metrics, value
from prometheus_client.parser import text_string_to_metric_families
from upstreams import EchoApp, RawClient, get, post, shed, unused_port

from splice import __version__
from splice.build import build
from splice.exposition import merge, render, retire
from splice.metrics import BUCKETS, MAX_SHED_SERIES, Metrics


def sample_metrics(shed_names: list[str], outcome: str = "OK") -> Metrics:
    m = Metrics()
    m.accepted += len(shed_names)
    for name in shed_names:
        m.closed(name, outcome, 10, 100)
    m.dial.observe(0.0003)
    m.dial.observe(20.0)  # past the last bucket: +Inf only
    m.head_parse.observe(0.00002)
    return m


def test_merge_sums_counts_bytes_histograms_and_resolver_figures() -> None:
    a = sample_metrics(["alpha", "beta"]).snapshot(1, {"hits": 2, "misses": 1, "stale": 0})
    b = sample_metrics(["alpha"], "CONNECT_FAILED").snapshot(
        3, {"hits": 5, "misses": 0, "stale": 1}
    )
    m = merge([a, b])
    assert m["active"] == 4
    assert m["counts"] == {"accepted": 3, "denied": 0, "closed:OK": 2, "closed:CONNECT_FAILED": 1}
    assert (m["bytes_up"], m["bytes_down"]) == (30, 300)
    assert m["shed_conns"] == {"alpha": 2, "beta": 1}
    pairs = zip(a["dial"]["counts"], b["dial"]["counts"], strict=True)
    assert m["dial"]["counts"] == [x + y for x, y in pairs]
    assert m["dial"]["sum"] == pytest.approx(2 * 20.0003)
    assert m["resolver"] == {"hits": 7, "misses": 1, "stale": 1}
    assert merge([]) == {}
    assert merge([a]) == a


def test_merge_caps_the_union_of_per_shed_series() -> None:
    half = MAX_SHED_SERIES - 6
    a = sample_metrics([f"a{i}" for i in range(half)] + ["busy"] * 5).snapshot(0, {})
    b = sample_metrics([f"b{i}" for i in range(half)]).snapshot(0, {})
    m = merge([a, b])
    assert len(m["shed_conns"]) == MAX_SHED_SERIES
    assert m["shed_conns"]["busy"] == 5  # the busiest sheds keep their own series
    assert sum(m["shed_conns"].values()) == 2 * half + 5
    assert set(m["shed_up"]) == set(m["shed_conns"]) == set(m["shed_down"])
    assert sum(m["shed_down"].values()) == 100 * (2 * half + 5)


def test_retire_zeroes_every_gauge_and_keeps_every_counter() -> None:
    """A dead worker's last snapshot stays in a supervisor's sums: its counts, not its levels."""
    snap = sample_metrics(["alpha"]).snapshot(3, {"hits": 2, "misses": 1, "stale": 0})
    snap["upstream_pool"] = {"idle": 4, "reused": 5, "evicted": 1, "stale": 1}
    snap["gc"] = {"collections": [3, 2, 1], "collected": [9, 8, 7], "seconds": [0.1] * 3}
    snap["gc"]["frozen"] = 40000
    kept = retire(snap)
    assert snap["active"] == 3 and snap["gc"]["frozen"] == 40000  # the original is left alone
    live = {f.name: f for f in text_string_to_metric_families(render(snap).decode())}
    dead = {f.name: f for f in text_string_to_metric_families(render(kept).decode())}
    gauges = [n for n, f in live.items() if f.type == "gauge" and n != "splice_build_info"]
    assert sorted(gauges) == [
        "splice_connections_active",
        "splice_gc_frozen_objects",
        "splice_upstream_idle",
    ]
    for name, fam in live.items():
        values = [x.value for x in dead[name].samples]
        if name in gauges:
            assert [x.value for x in fam.samples] != values == [0.0] * len(values), name
        else:
            assert [x.value for x in fam.samples] == values, name


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_render_is_valid_prometheus_text_with_the_documented_families() -> None:
    m = sample_metrics(["alpha"])
    m.closed("alpha", "RESET", 1, 0)
    m.closed("", "UNKNOWN_HOST", 0, 900)
    snap = m.snapshot(2, {"hits": 4, "misses": 3, "stale": 1})
    snap["upstream_pool"] = {"idle": 2, "reused": 5, "evicted": 1, "stale": 0}
    text = render(snap).decode()
    fam = families(text)
    kinds = {name: f.type for name, f in fam.items()}
    assert kinds == {
        "splice_connections_accepted": "counter", "splice_connections_denied": "counter",
        "splice_connections_active": "gauge", "splice_connections_closed": "counter",
        "splice_errors": "counter", "splice_shed_connections": "counter",
        "splice_bytes": "counter", "splice_shed_bytes": "counter",
        "splice_dial_seconds": "histogram", "splice_first_upstream_byte_seconds": "histogram",
        "splice_head_parse_seconds": "histogram", "splice_resolver_cache_hits": "counter",
        "splice_resolver_cache_misses": "counter", "splice_resolver_cache_stale": "counter",
        "splice_upstream_idle": "gauge", "splice_upstream_reused": "counter",
        "splice_upstream_evicted": "counter", "splice_upstream_stale": "counter",
        "splice_build_info": "gauge",
    }  # fmt: skip
    got = parse_metrics(text)
    assert value(got, "splice_connections_active") == 2
    assert value(got, "splice_connections_closed_total", outcome="RESET") == 1
    # errors are the X-Shed-Error codes only: RESET and OK are outcomes, not errors
    errors = {s.labels["code"]: s.value for s in fam["splice_errors"].samples}
    assert errors == {"UNKNOWN_HOST": 1}
    assert value(got, "splice_bytes_total", direction="down") == 1000
    assert value(got, "splice_resolver_cache_stale_total") == 1
    assert value(got, "splice_upstream_idle") == 2
    assert value(got, "splice_build_info", version=__version__, build=build()) == 1
    assert value(got, "splice_upstream_reused_total") == 5
    buckets = [s for s in fam["splice_dial_seconds"].samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets] == [*map(repr, BUCKETS), "+Inf"]
    assert [s.value for s in buckets] == sorted(s.value for s in buckets)  # cumulative
    assert buckets[-1].value == value(got, "splice_dial_seconds_count") == 2
    assert buckets[-2].value == 1
    assert "splice_workers" not in text  # only a supervisor reports workers


def test_render_reports_workers_for_a_supervisor() -> None:
    snap = merge([sample_metrics(["alpha"]).snapshot(0, {})])
    snap["supervisor"] = {
        "workers": 2, "restarts": 1,
        "each": {"0": {"pid": 101, "accepted": 1}, "1": {"pid": 102, "accepted": 0}},
    }  # fmt: skip
    got = parse_metrics(render(snap).decode())
    assert value(got, "splice_workers") == 2
    assert value(got, "splice_worker_restarts_total") == 1
    assert value(got, "splice_worker_pid", worker="1") == 102
    assert value(got, "splice_worker_connections_accepted_total", worker="0") == 1


def test_render_reports_the_collectors_work_per_generation() -> None:
    gc = {"collections": [40, 4, 1], "collected": [300, 20, 7], "seconds": [0.002, 0.001, 0.014]}
    a = {**sample_metrics(["alpha"]).snapshot(0, {}), "gc": {**gc, "frozen": 33000}}
    b = {**sample_metrics(["alpha"]).snapshot(0, {}), "gc": {**gc, "frozen": 32000}}
    text = render(merge([a, b])).decode()
    fam = families(text)
    for name in ("splice_gc_collections", "splice_gc_objects_collected", "splice_gc_seconds"):
        assert fam[name].type == "counter"
    assert fam["splice_gc_frozen_objects"].type == "gauge"
    got = parse_metrics(text)
    assert value(got, "splice_gc_collections_total", generation="2") == 2  # two workers
    assert value(got, "splice_gc_objects_collected_total", generation="0") == 600
    assert value(got, "splice_gc_seconds_total", generation="2") == 0.028
    assert value(got, "splice_gc_frozen_objects") == 65000


# -- against a running splice ----------------------------------------------------------


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[..., OpsSplice]]:
    procs: list[OpsSplice] = []

    def start(sheds: dict[str, Any], **extra: Any) -> OpsSplice:
        cfg = {
            "domains": ["test"],
            "listen": [{"address": "127.0.0.1:0"}],
            "admin": {"address": "127.0.0.1:0"},
            **extra,
            "sheds": sheds,
        }
        procs.append(OpsSplice(cfg, tmp_path))
        return procs[-1]

    yield start
    for p in procs:
        assert p.stop() == 0, p.stderr


def exchange(port: int, request: bytes) -> int:
    with RawClient(port) as c:
        c.send(request)
        return c.read_response().status


def scrape_until(s: OpsSplice, closed: int, timeout: float = 10.0) -> dict[Any, float]:
    """Metrics once ``closed`` connections have been counted as closed."""
    deadline = time.monotonic() + timeout
    while True:
        got = s.scrape()
        done = sum(v for (name, _), v in got.items() if name == "splice_connections_closed_total")
        if done >= closed or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_counters_move_with_traffic(
    running: Callable[..., OpsSplice], make_app: Callable[..., EchoApp]
) -> None:
    alpha = make_app("alpha")
    down = {"address": "127.0.0.1", "default_port": unused_port()}
    s = running({"alpha": shed(alpha), "down": down})
    before = s.scrape()
    assert value(before, "splice_connections_accepted_total") == 0
    body = b"x" * 5000
    for _ in range(3):
        assert exchange(s.port, post("alpha.test", body)) == 200
    assert exchange(s.port, get("down.test")) == 502
    assert exchange(s.port, get("elsewhere.example")) == 404
    got = scrape_until(s, 5)
    assert value(got, "splice_connections_accepted_total") == 5
    assert value(got, "splice_connections_active") == 0
    assert value(got, "splice_connections_closed_total", outcome="OK") == 3
    assert value(got, "splice_errors_total", code="CONNECT_FAILED") == 1
    assert value(got, "splice_errors_total", code="UNKNOWN_HOST") == 1
    assert value(got, "splice_shed_connections_total", shed="alpha") == 3
    assert value(got, "splice_bytes_total", direction="up") >= 3 * len(body)
    assert value(got, "splice_shed_bytes_total", shed="alpha", direction="down") > 0
    assert value(got, "splice_dial_seconds_count") >= 3
    assert value(got, "splice_first_upstream_byte_seconds_count") >= 3
    assert value(got, "splice_head_parse_seconds_count") >= 5


def test_a_serving_splice_has_its_start_up_heap_frozen(running: Callable[..., OpsSplice]) -> None:
    s = running({"alpha": {"address": "127.0.0.1", "default_port": unused_port()}})
    got = s.scrape()
    assert value(got, "splice_gc_frozen_objects") > 5000  # modules, config, loop
    # the full collection before the freeze, timed
    assert value(got, "splice_gc_collections_total", generation="2") >= 1
    assert value(got, "splice_gc_seconds_total", generation="2") > 0


def test_resolver_counters_survive_a_reload(
    running: Callable[..., OpsSplice], make_app: Callable[..., EchoApp]
) -> None:
    alpha = make_app("alpha")
    fake = ShedServerThread()
    try:
        fake.add_shed("alpha", "127.0.0.1")
        resolver = {"chain": ["shed-api"], "shed_server": fake.url, "ttl": 60.0}
        s = running({"alpha": {"default_port": alpha.port}}, resolver=resolver)
        for _ in range(3):
            assert exchange(s.port, get("alpha.test")) == 200
        got = scrape_until(s, 3)
        assert value(got, "splice_resolver_cache_misses_total") == 1
        assert value(got, "splice_resolver_cache_hits_total") == 2
        assert s.admin("/reload", "POST")[0] == 200  # a new resolver chain, counting from 0
        assert exchange(s.port, get("alpha.test")) == 200
        got = scrape_until(s, 4)
        assert value(got, "splice_resolver_cache_misses_total") == 2
        assert value(got, "splice_resolver_cache_hits_total") == 2
    finally:
        fake.close()


def test_the_upstream_pool_is_counted(
    running: Callable[..., OpsSplice], make_app: Callable[..., EchoApp]
) -> None:
    alpha = make_app("alpha")
    s = running({"alpha": shed(alpha)})
    for _ in range(4):  # one connection per request: the first dials, the rest reuse
        assert exchange(s.port, get("alpha.test", extra="Connection: close\r\n")) == 200
    got = scrape_until(s, 4)
    assert value(got, "splice_upstream_reused_total") == 3
    assert value(got, "splice_upstream_idle") == 1
    assert alpha.accepted == 1


def test_a_keep_alive_connection_counts_each_sheds_bytes_to_that_shed(
    running: Callable[..., OpsSplice], make_app: Callable[..., EchoApp]
) -> None:
    """A front (Caddy) pools connections to splice: one carries requests for many sheds."""
    alpha, beta = make_app("alpha"), make_app("beta")
    s = running({"alpha": shed(alpha), "beta": shed(beta)})
    with RawClient(s.port) as c:
        for host, size in (("alpha.test", 50_000), ("beta.test", 3_000), ("alpha.test", 7_000)):
            c.send(post(host, b"x" * size))
            assert c.read_response().status == 200
    got = scrape_until(s, 1)
    assert value(got, "splice_connections_closed_total", outcome="OK") == 1
    # one count per run of requests to a shed: alpha, beta, alpha again
    assert value(got, "splice_shed_connections_total", shed="alpha") == 2
    assert value(got, "splice_shed_connections_total", shed="beta") == 1
    alpha_up = value(got, "splice_shed_bytes_total", shed="alpha", direction="up")
    beta_up = value(got, "splice_shed_bytes_total", shed="beta", direction="up")
    assert 57_000 < alpha_up < 58_000
    assert 3_000 < beta_up < 4_000
    total = value(got, "splice_bytes_total", direction="up")
    assert total == alpha_up + beta_up
    downs = [
        value(got, "splice_shed_bytes_total", shed=n, direction="down") for n in ("alpha", "beta")
    ]
    assert all(d > 0 for d in downs)
    assert value(got, "splice_bytes_total", direction="down") == sum(downs)


class SlowTlsVm:
    """A TLS passthrough "VM" on loopback: it takes the hello, answers ``first`` after
    ``delay`` seconds, and closes ``linger`` seconds later (splice never decrypts, so
    raw bytes do). ``client_first``: it waits for the client to close first."""

    def __init__(self, delay: float, linger: float, client_first: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.delay, self.linger, self.client_first = delay, linger, client_first
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10.0)
            conn.recv(65536)
            time.sleep(self.delay)
            conn.sendall(b"\x16\x03\x03\x00\x04" + b"flit")
            if self.client_first:
                while conn.recv(65536):
                    pass
            else:
                time.sleep(self.linger)

    def close(self) -> None:
        self.thread.join(10.0)
        self.sock.close()


@pytest.mark.parametrize("client_first", [False, True], ids=["vm-closes", "client-closes"])
def test_a_tls_passthroughs_first_upstream_byte_is_timed_when_it_came(
    running: Callable[..., OpsSplice], client_first: bool
) -> None:
    """The VM answers the hello after 0.2 s and holds the connection 0.6 s more: the
    histogram gets 0.2 s, not the time the connection ended, whichever side ends it."""
    vm = SlowTlsVm(delay=0.2, linger=0.6, client_first=client_first)
    try:
        listen = [{"address": "127.0.0.1:0", "mode": "tls-passthrough"}]
        s = running({"alpha": {"address": "127.0.0.1", "tls_port": vm.port}}, listen=listen)
        with socket.create_connection(("127.0.0.1", s.port), timeout=10.0) as c:
            c.sendall(real_hello("alpha.test"))
            assert c.recv(9) == b"\x16\x03\x03\x00\x04flit"
            if client_first:
                time.sleep(0.6)
                c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass
        got = scrape_until(s, 1)
        assert value(got, "splice_first_upstream_byte_seconds_count") == 1
        took = value(got, "splice_first_upstream_byte_seconds_sum")
        assert 0.19 < took < 0.5, took
    finally:
        vm.close()
