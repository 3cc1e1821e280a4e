"""Reload and shutdown (issue 7): SIGHUP swaps the config under load, SIGTERM drains.

- SIGHUP: keep-alive and new connections running across several reloads all
  succeed; a shed added by a reload becomes reachable, connections already routed
  keep their route; a config that does not load (or whose listener cannot bind) is
  refused with a log line naming the problem and the running config stays.
- SIGTERM: listeners close at once, a transfer in flight finishes intact, idle
  keep-alive connections are closed promptly, and the process exits 0 within
  ``drain_timeout``; what does not finish by then is cut.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hardening_peers import (
    DOMAIN,
    WAIT,
    Client,
    Fleet,
    config,
    read_to_end,
    shed_at,
    wait_until,
)
from ops_support import ShedServerThread
from upstreams import BulkServer, EchoApp, WsClient, get, post, random_body

ALPHA = f"alpha.{DOMAIN}"
#: SIGHUPs sent while the load runs
RELOADS = 6
GAMMA = f"gamma.{DOMAIN}"
BULK = f"bulk.{DOMAIN}"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    f.allowed = ("reload of",)  # the refused reloads log at ERROR level on purpose
    yield f
    errors = f.close()
    assert not errors, errors


def _status(port: int, host: str) -> tuple[int, str]:
    """(status, VM name or error code) of a GET on a new connection."""
    with Client(port) as c:
        c.send(get(host))
        resp = c.read_response()
    if resp.status == 200:
        return 200, str(resp.json()["name"])
    return resp.status, resp.header("x-shed-error") or ""


def _paced_read(c: Client, size: int, rate: float, progress: list[int]) -> str:
    """Read ``size`` body bytes at about ``rate`` bytes/s; their SHA-256."""
    digest = hashlib.sha256()
    got = 0
    if c.buf:
        first = bytes(c.buf[:size])
        del c.buf[: len(first)]
        digest.update(first)
        got = len(first)
    t0 = time.monotonic()
    while got < size:
        data = c.sock.recv(min(1 << 16, size - got))
        if not data:
            break
        digest.update(data)
        got += len(data)
        progress[0] = got
        ahead = got / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    assert got == size, f"the body ended after {got} of {size} bytes"
    return digest.hexdigest()


@dataclass
class Load:
    """Requests looping on keep-alive and on new connections until told to stop."""

    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep_alive(self) -> None:
        try:
            with Client(self.port) as c:
                for _ in range(5000):  # bounded; stops on ``stop`` long before
                    if self.stop.is_set():
                        return
                    c.send(get(ALPHA))
                    resp = c.read_response()
                    self._count(resp.status, "keep-alive")
        except Exception as e:
            self._fail(f"keep-alive: {e!r}")

    def fresh(self) -> None:
        for _ in range(5000):
            if self.stop.is_set():
                return
            try:
                status, _ = _status(self.port, ALPHA)
            except Exception as e:
                self._fail(f"new connection: {e!r}")
                return
            self._count(status, "new connection")

    def _count(self, status: int, what: str) -> None:
        with self.lock:
            self.done += 1
            if status != 200:
                self.errors.append(f"{what}: status {status}")

    def _fail(self, msg: str) -> None:
        with self.lock:
            self.errors.append(msg)


def test_sighup_reloads_under_load_drop_nothing_and_change_routes_for_new_connections(
    fleet: Fleet,
) -> None:
    alpha1, alpha2 = fleet.keep(EchoApp("alpha-1")), fleet.keep(EchoApp("alpha-2"))
    gamma = fleet.keep(EchoApp("gamma"))
    bulk = fleet.keep(BulkServer("bulk"))
    cfg_a = config({"alpha": shed_at(alpha1), "bulk": shed_at(bulk)})
    cfg_b = config({"alpha": shed_at(alpha2), "bulk": shed_at(bulk), "gamma": shed_at(gamma)})
    s = fleet.start(cfg_a)
    load = Load(s.port)
    size = 16 << 20
    progress = [0]
    digests: list[str] = []

    def download() -> None:
        try:
            with Client(s.port) as c:
                c.send(get(BULK, f"/download/{size}"))
                assert c.read_head()[0] == 200
                digests.append(_paced_read(c, size, 8 << 20, progress))
        except Exception as e:
            load._fail(f"download: {e!r}")

    threads = [threading.Thread(target=load.keep_alive) for _ in range(2)]
    threads += [threading.Thread(target=load.fresh) for _ in range(2)]
    threads.append(threading.Thread(target=download))
    routed = Client(s.port)  # routed to alpha-1 before any reload
    try:
        routed.send(get(ALPHA))
        first = routed.read_response().json()
        assert first["name"] == "alpha-1"
        for t in threads:
            t.start()
        answers = []
        for i in range(RELOADS):
            time.sleep(0.25)
            cfg, new_alpha = (cfg_b, "alpha-2") if i % 2 == 0 else (cfg_a, "alpha-1")
            line = s.reload(cfg)
            assert "reloaded" in line, line
            answers.append((_status(s.port, ALPHA), _status(s.port, GAMMA)))
            assert answers[-1][0] == (200, new_alpha), answers
            want_gamma = (200, "gamma") if cfg is cfg_b else (404, "SHED_NOT_FOUND")
            assert answers[-1][1] == want_gamma, answers
            routed.send(get(ALPHA))  # the connection routed before keeps its upstream
            again = routed.read_response().json()
            assert (again["name"], again["conn"]) == ("alpha-1", first["conn"]), again
        time.sleep(0.3)
    finally:
        load.stop.set()
        for t in threads:
            t.join(30.0)
        routed.close()
    reloads = len(s.grep("reloaded "))
    figures = f"{load.done} requests across {reloads} reloads; download {progress[0]} B"
    print(figures)
    assert not load.errors, figures + "\n" + "\n".join(load.errors[:20])
    assert load.done >= 20, figures
    assert reloads == RELOADS, figures
    assert digests == bulk.wait_sent(1), f"the download in flight changed: {digests}, {figures}"


def test_a_config_that_does_not_load_is_refused_and_the_running_one_stays(
    fleet: Fleet,
) -> None:
    alpha, gamma = fleet.keep(EchoApp("alpha")), fleet.keep(EchoApp("gamma"))
    good = config({"alpha": shed_at(alpha)})
    s = fleet.start(good)
    taken = fleet.keep(socket.socket())
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy_port = taken.getsockname()[1]
    # what: (a config dict or TOML text, what the refusal must name)
    bad: dict[str, tuple[dict[str, Any] | str, str]] = {
        "an unknown key": (
            dict(config({"gamma": shed_at(gamma)}), max_conections=3),
            "max_conections",
        ),
        "broken TOML": ('domains = ["test"\n[[listen]]\n', "not valid TOML"),
        "a bad value": (config({"gamma": shed_at(gamma)}, head_timeout=-1), "head_timeout"),
        "a bad shed name": (config({"Gamma": shed_at(gamma)}), "sheds.Gamma"),
        "a port in use": (
            config(
                {"gamma": shed_at(gamma)},
                listen=[
                    {"address": "127.0.0.1:0"},
                    {"address": f"127.0.0.1:{busy_port}"},
                ],
            ),
            "in use",
        ),
        # it was taken, then failed half-way: a new listener bound and gamma routed
        "a shed-server URL with no usable port": (
            config(
                {"gamma": shed_at(gamma)},
                listen=[{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0"}],
                resolver={"shed_server": "http://127.0.0.1:99999"},
            ),
            "resolver.shed_server",
        ),
    }
    for what, (cfg, needle) in bad.items():
        line = s.reload(cfg)
        assert "refused" in line and needle in line, (what, line)
        assert "the running config stays" in line, line
        assert _status(s.port, ALPHA) == (200, "alpha"), what
        assert _status(s.port, f"gamma.{DOMAIN}") == (404, "SHED_NOT_FOUND"), what
    line = s.reload(config({"alpha": shed_at(alpha), "gamma": shed_at(gamma)}))
    assert "reloaded" in line, line
    assert _status(s.port, f"gamma.{DOMAIN}") == (200, "gamma")
    assert len(s.addresses) == 1 and _status(s.port, ALPHA) == (200, "alpha")


def test_a_reload_while_a_shed_lookup_is_in_flight_still_answers_it(fleet: Fleet) -> None:
    """A reload used to cancel the replaced resolvers' lookups in flight: the client
    waiting on one got nothing until ``idle_timeout``. The lookup now lands first."""
    alpha = fleet.keep(EchoApp("alpha"))
    fake = fleet.keep(ShedServerThread())
    fake.add_shed("alpha", "127.0.0.1")
    fake.fake.delay = 1.0
    cfg = config({}, default_port=alpha.port, resolver={"chain": ["shed-api"],
                                                        "shed_server": fake.url})  # fmt: skip
    s = fleet.start(cfg)
    got: list[tuple[int, str]] = []
    asking = threading.Thread(target=lambda: got.append(_status(s.port, ALPHA)))
    asking.start()
    time.sleep(0.3)  # the lookup is on its way to the shed-server
    assert "reloaded" in s.reload(cfg)
    asking.join(WAIT)
    assert got == [(200, "alpha")]


def test_a_reload_that_changes_the_domains_reads_every_host_again(fleet: Fleet) -> None:
    """Parsed Hosts are memoised per config: the old domain's names must not survive."""
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(config({"alpha": shed_at(alpha)}))
    other = "elsewhere.example"
    for _ in range(3):  # the name is memoised by now
        assert _status(s.port, ALPHA) == (200, "alpha")
    line = s.reload(dict(config({"alpha": shed_at(alpha)}), domains=[other]))
    assert "reloaded" in line, line
    assert _status(s.port, ALPHA) == (404, "UNKNOWN_HOST")
    assert _status(s.port, f"alpha.{other}") == (200, "alpha")
    line = s.reload(config({"alpha": shed_at(alpha)}))
    assert "reloaded" in line, line
    assert _status(s.port, ALPHA) == (200, "alpha")
    assert _status(s.port, f"alpha.{other}") == (404, "UNKNOWN_HOST")


#: the drain test's transfer: big enough to be in flight at SIGTERM, paced so it is
DRAIN_SIZE = 32 << 20
DRAIN_RATE = 16 << 20
DRAIN_TIMEOUT = 8.0


def test_sigterm_finishes_transfers_in_flight_closes_idle_connections_and_exits_0(
    fleet: Fleet,
) -> None:
    alpha, bulk = fleet.keep(EchoApp("alpha")), fleet.keep(BulkServer("bulk"))
    s = fleet.start(
        config({"alpha": shed_at(alpha), "bulk": shed_at(bulk)}, drain_timeout=DRAIN_TIMEOUT),
        drain=None,  # the config's drain_timeout, not --drain
    )
    upload = random_body(3, 8 << 20)
    progress, up_sent = [0], [0]
    results: dict[str, object] = {}

    def download() -> None:
        try:
            with Client(s.port) as c:
                c.send(get(BULK, f"/download/{DRAIN_SIZE}"))
                assert c.read_head()[0] == 200
                results["download"] = _paced_read(c, DRAIN_SIZE, DRAIN_RATE, progress)
                results["download_end"] = read_to_end(c.sock, timeout=5.0)[1]
        except Exception as e:
            results["download"] = repr(e)

    def upload_slowly() -> None:
        try:
            with Client(s.port) as c:
                req = post(BULK, upload, "/upload")
                for i in range(0, len(req), 1 << 18):  # 256 KiB every 10 ms
                    c.send(req[i : i + (1 << 18)])
                    up_sent[0] = i
                    time.sleep(0.01)
                results["upload"] = c.read_response().json()
        except Exception as e:
            results["upload"] = repr(e)

    idle = [Client(s.port) for _ in range(3)]
    never = Client(s.port)  # connected, never sent a byte
    workers = [threading.Thread(target=download), threading.Thread(target=upload_slowly)]
    try:
        for c in idle:
            c.send(get(ALPHA))
            assert c.read_response().status == 200
        for t in workers:
            t.start()
        wait_until(lambda: progress[0] >= 4 << 20 and up_sent[0] >= 1 << 20, "transfers", 15.0)
        at_term = (progress[0], up_sent[0])
        s.terminate()
        closed_after = []
        for c in [*idle, never]:
            data, how = read_to_end(c.sock, timeout=5.0)
            assert (data, how) in ((b"", "eof"), (b"", "reset")), (data[:100], how)
            closed_after.append(time.monotonic() - (s.sigterm_at or 0.0))
            c.close()
        wait_until(lambda: _refused(s.port), "the listener to close", 3.0)
        for t in workers:
            t.join(30.0)
        status = s.wait_exit(DRAIN_TIMEOUT + 5.0)
        exited_after = time.monotonic() - (s.sigterm_at or 0.0)
    finally:
        for c in [*idle, never]:
            c.close()
    figures = (
        f"SIGTERM with {at_term[0]} of {DRAIN_SIZE} B downloaded, {at_term[1]} B uploaded; "
        f"idle closed after {max(closed_after):.2f} s; exit {status} after {exited_after:.2f} s"
    )
    print(figures)
    assert results["download"] == bulk.wait_sent(1)[0], (results, figures)
    assert results.get("download_end") == "eof", (results, figures)
    assert results["upload"] == {
        "received": len(upload),
        "sha256": hashlib.sha256(upload).hexdigest(),
    }, (results["upload"], figures)
    assert at_term[0] < DRAIN_SIZE, "the download was not in flight at SIGTERM: " + figures
    assert max(closed_after) < 3.0, figures
    assert status == 0, figures + "\n" + s.stderr[-2000:]
    assert exited_after < DRAIN_TIMEOUT, figures


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def test_a_connection_still_open_at_drain_timeout_is_cut_and_the_exit_is_still_0(
    fleet: Fleet,
) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(config({"alpha": shed_at(alpha)}, drain_timeout=1.5), drain=None)
    with s.client() as c:
        ws = WsClient(c, ALPHA)
        assert ws.echo("before") == "before"
        s.terminate()
        time.sleep(0.3)
        assert ws.echo("during the drain") == "during the drain"
        _, how = read_to_end(c.sock, timeout=8.0)
        cut_after = time.monotonic() - (s.sigterm_at or 0.0)
    status = s.wait_exit(5.0)
    figures = f"WebSocket cut after {cut_after:.2f} s ({how}); exit {status}"
    assert how in ("eof", "reset") and 1.0 < cut_after < 6.0, figures
    assert status == 0, figures
    assert "SHUTDOWN" in s.outcomes(), s.access_lines()
