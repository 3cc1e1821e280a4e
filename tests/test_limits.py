"""Limits and timeouts (issue 7): connection caps, head/connect/idle timeouts, EMFILE.

Every test runs its own splice subprocess and its own VMs on loopback. Timing
assertions only bound from above, generously: the machine is small and shared.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hardening_peers import (
    DOMAIN,
    Blackhole,
    Client,
    Fleet,
    config,
    read_to_end,
    shed_at,
    wait_until,
)
from upstreams import EchoApp, WsClient, assert_shed_error, get

ALPHA = f"alpha.{DOMAIN}"
BETA = f"beta.{DOMAIN}"
#: a TLS alert record header: type 21 (alert), version 3.3, length 2; then level, description
ALERT_HEAD = b"\x15\x03\x03\x00\x02"
FATAL = 2


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    errors = f.close()
    assert not errors, errors


def _ok(c: Client, host: str) -> dict[str, object]:
    c.send(get(host))
    resp = c.read_response()
    assert resp.status == 200, (resp.status, resp.body[:300])
    answer: dict[str, object] = resp.json()
    return answer


def _eventually_ok(s_port: int, host: str, what: str, timeout: float = 5.0) -> int:
    """A fresh connection's request succeeds within ``timeout``; the attempts it took."""
    attempts = 0
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        attempts += 1
        with Client(s_port) as c:
            c.send(get(host))
            resp = c.read_response()
        if resp.status == 200:
            return attempts
        last = (resp.status, resp.header("x-shed-error"))
        time.sleep(0.1)
    raise AssertionError(f"{what}: still refused after {attempts} attempts ({timeout} s): {last}")


# -- connection limits ----------------------------------------------------------------


def test_over_max_connections_http_gets_503_with_retry_after_and_tls_gets_an_alert(
    fleet: Fleet,
) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(
        config(
            {"alpha": shed_at(alpha)},
            listen=[
                {"address": "127.0.0.1:0", "mode": "http"},
                {"address": "127.0.0.1:0", "mode": "tls-passthrough", "fallback": "alpha"},
            ],
            max_connections=3,
        )
    )
    held = [s.client() for _ in range(3)]
    try:
        for c in held:
            _ok(c, ALPHA)  # accepted and tracked: each holds a slot
        with s.client() as over:
            resp = over.read_response()  # refused on accept, before a byte is sent
            assert_shed_error(resp, 503, "TOO_MANY_CONNECTIONS")
            assert resp.header("retry-after") == "1", resp.headers
            assert over.closed_by_peer()
        with s.client(1) as over_tls:
            data, how = read_to_end(over_tls.sock, timeout=5.0)
        assert data[:5] == ALERT_HEAD and data[5] == FATAL and len(data) == 7, (data, how)
        # the held connections still work while others are refused
        for c in held:
            _ok(c, ALPHA)
    finally:
        held[0].close()
    try:
        _eventually_ok(s.port, ALPHA, "a slot freed by a closed connection")
    finally:
        for c in held[1:]:
            c.close()
    wait_until(lambda: s.outcomes()["TOO_MANY_CONNECTIONS"] >= 2, "the refusals in the log", 3.0)


def test_the_per_shed_limit_refuses_that_shed_while_another_shed_still_works(
    fleet: Fleet,
) -> None:
    alpha, beta = fleet.keep(EchoApp("alpha")), fleet.keep(EchoApp("beta"))
    s = fleet.start(
        config(
            {"alpha": shed_at(alpha), "beta": shed_at(beta)},
            max_connections_per_shed=2,
        )
    )
    held = [s.client() for _ in range(2)]
    try:
        for c in held:
            _ok(c, ALPHA)
        with s.client() as c:
            c.send(get(ALPHA))
            resp = c.read_response()
            assert_shed_error(resp, 503, "TOO_MANY_CONNECTIONS")
            assert resp.header("retry-after") == "1", resp.headers
        with s.client() as c, s.client() as c2:  # beta has its own two slots
            assert _ok(c, BETA)["name"] == "beta"
            assert _ok(c2, BETA)["name"] == "beta"
        alpha.sync()
        assert alpha.accepted == 2, f"the refused request reached the VM: {alpha.accepted}"
    finally:
        held[0].close()
    try:
        attempts = _eventually_ok(s.port, ALPHA, "alpha's slot after a close")
    finally:
        held[1].close()
    assert attempts <= 50


def test_a_sheds_own_max_connections_overrides_the_global_per_shed_limit(fleet: Fleet) -> None:
    alpha, beta = fleet.keep(EchoApp("alpha")), fleet.keep(EchoApp("beta"))
    s = fleet.start(
        config(
            {"alpha": shed_at(alpha, max_connections=1), "beta": shed_at(beta)},
            max_connections_per_shed=3,
        )
    )
    with s.client() as a1, s.client() as b1, s.client() as b2, s.client() as b3:
        _ok(a1, ALPHA)
        with s.client() as a2:
            a2.send(get(ALPHA))
            assert_shed_error(a2.read_response(), 503, "TOO_MANY_CONNECTIONS")
        for c in (b1, b2, b3):
            _ok(c, BETA)
        with s.client() as b4:
            b4.send(get(BETA))
            assert_shed_error(b4.read_response(), 503, "TOO_MANY_CONNECTIONS")
        _ok(a1, ALPHA)  # the holder keeps working on its keep-alive connection
    _eventually_ok(s.port, ALPHA, "alpha after its one holder closed")
    _eventually_ok(s.port, BETA, "beta after its holders closed")


def test_a_keep_alive_connection_moving_between_sheds_holds_one_slot_at_a_time(
    fleet: Fleet,
) -> None:
    alpha, beta = fleet.keep(EchoApp("alpha")), fleet.keep(EchoApp("beta"))
    s = fleet.start(
        config({"alpha": shed_at(alpha), "beta": shed_at(beta)}, max_connections_per_shed=1)
    )
    with s.client() as c:
        for i in range(6):  # alpha, beta, alpha...: each move retires the old upstream
            host = ALPHA if i % 2 == 0 else BETA
            assert _ok(c, host)["name"] == host.split(".")[0]
        # now on beta: alpha's slot was handed back when the connection moved
        _eventually_ok(s.port, ALPHA, "alpha's slot after the connection moved to beta", 3.0)


# -- timeouts ------------------------------------------------------------------------


def test_a_head_that_is_not_complete_in_time_gets_408_and_a_tls_hello_an_alert(
    fleet: Fleet,
) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(
        config(
            {"alpha": shed_at(alpha)},
            listen=[
                {"address": "127.0.0.1:0", "mode": "http"},
                {"address": "127.0.0.1:0", "mode": "tls-passthrough"},
            ],
            head_timeout=1.0,
        )
    )
    with s.client() as c, s.client(1) as t:
        c.send(f"GET / HTTP/1.1\r\nHost: {ALPHA}\r\nX-Slow: ".encode())
        t.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a hello's first bytes
        t0 = time.monotonic()
        resp = c.read_response()
        took = time.monotonic() - t0
        assert_shed_error(resp, 408, "HEAD_TIMEOUT")
        data, how = read_to_end(t.sock, timeout=5.0)
    assert took < 5.0, f"408 after {took:.2f} s with head_timeout = 1"
    assert data[:5] == ALERT_HEAD and data[5] == FATAL, (data, how)
    alpha.sync()
    assert alpha.accepted == 0


def test_a_vm_that_does_not_accept_within_connect_timeout_gets_504(fleet: Fleet) -> None:
    hole = fleet.keep(Blackhole())
    s = fleet.start(
        config({"slow": {"address": hole.host, "default_port": hole.port}}, connect_timeout=1.0)
    )
    with s.client() as c:
        t0 = time.monotonic()
        c.send(get(f"slow.{DOMAIN}"))
        resp = c.read_response()
        took = time.monotonic() - t0
    assert_shed_error(resp, 504, "UPSTREAM_TIMEOUT")
    assert 0.5 < took < 6.0, f"504 after {took:.2f} s with connect_timeout = 1"
    assert s.wait_access(1)[-1].endswith("UPSTREAM_TIMEOUT")


def test_idle_timeouts_close_idle_keep_alive_but_spare_upgraded_unless_the_shed_sets_one(
    fleet: Fleet,
) -> None:
    alpha, beta = fleet.keep(EchoApp("alpha")), fleet.keep(EchoApp("beta"))
    s = fleet.start(
        config(
            {"alpha": shed_at(alpha), "beta": shed_at(beta, idle_timeout=1.0)},
            idle_timeout=1.0,
            idle_timeout_upgraded=0.0,
        )
    )
    idle, busy = s.client(), s.client()
    ws_alpha_c, ws_beta_c = s.client(), s.client()
    try:
        _ok(idle, ALPHA)
        _ok(busy, ALPHA)
        ws_alpha = WsClient(ws_alpha_c, ALPHA)
        ws_beta = WsClient(ws_beta_c, BETA)
        assert ws_alpha.echo("a") == "a" and ws_beta.echo("b") == "b"
        # 3.5 s: past the 1 s idle timeout plus a 1 s sweep, with margin; the busy
        # connection makes a request every 0.4 s meanwhile (same upstream throughout)
        conns = set()
        end = time.monotonic() + 3.5
        for _ in range(20):
            if time.monotonic() >= end:
                break
            conns.add(_ok(busy, ALPHA)["conn"])
            time.sleep(0.4)
        assert len(conns) == 1, f"the busy connection was re-dialled: {conns}"
        data, how = read_to_end(idle.sock, timeout=5.0)
        assert (data, how) == (b"", "eof"), "an idle keep-alive connection was not closed"
        data, how = read_to_end(ws_beta_c.sock, timeout=5.0)
        assert how in ("eof", "reset"), "an idle WebSocket to a shed with idle_timeout stayed"
        # the WebSocket to alpha (idle_timeout_upgraded = 0) is still there and working
        assert ws_alpha.echo("still here") == "still here"
        ws_alpha.close()
    finally:
        for c in (idle, busy, ws_alpha_c, ws_beta_c):
            c.close()
    s.wait_access(3)
    assert s.outcomes()["IDLE_TIMEOUT"] == 2, s.access_lines()


# -- out of fds --------------------------------------------------------------------------


#: the fd limit splice runs under (soft = hard, so it cannot raise it)
NOFILE = 64
#: client connections opened at once: well over what NOFILE lets splice accept
FLOOD = 150


def test_the_accept_loop_survives_running_out_of_fds_and_recovers_by_itself(
    fleet: Fleet,
) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(config({"alpha": shed_at(alpha)}, head_timeout=30.0), nofile=NOFILE)
    with s.client() as c:
        _ok(c, ALPHA)
    base = s.fd_total()
    flood: list[socket.socket] = []
    try:
        for _ in range(FLOOD):
            flood.append(socket.create_connection(("127.0.0.1", s.port), timeout=5.0))
        wait_until(lambda: bool(s.grep("accept on")), "the 'accept ... failed' log line", 5.0)
        peak = s.fd_total()
        # an accepted client asks for a VM while no fd is free: an error page, not a crash
        flood[0].sendall(get(ALPHA, extra="Connection: close\r\n"))
        data, how = read_to_end(flood[0], timeout=5.0)
        first = data.split(b"\r\n", 1)[0]
        assert first.startswith((b"HTTP/1.1 502", b"HTTP/1.1 200")), (first, how)
        time.sleep(0.5)  # several backoff periods while still exhausted
    finally:
        for sock in flood:
            sock.close()
    attempts = _eventually_ok(s.port, ALPHA, "a request after the fds came back", 10.0)
    failed = s.grep("accept on")
    end = s.fd_total()
    figures = f"fds: {base} before, {peak} at the peak (limit {NOFILE}), {end} after; " + (
        f"{len(failed)} 'accept ... failed' lines; recovered after {attempts} attempt(s)"
    )
    print(figures)
    assert peak >= NOFILE - 2, figures
    assert 1 <= len(failed) <= 2, figures + "\n" + "\n".join(failed)
    assert "Too many open files" in failed[0], failed[0]
    assert attempts <= 3, figures
    wait_until(lambda: s.fd_total() <= base + 2, f"fds back near {base} ({figures})", 5.0)
