"""``workers = 2``: a supervisor, two workers sharing the listener (SO_REUSEPORT), summed metrics.

The connection limits hold for the instance (each worker enforces its share), at start
and after a reload; without a ``workers`` key there is one worker per core.

splice runs as a subprocess; its workers are found as its child processes (/proc).
Only those children of the process this test started are ever signalled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ops_support import OpsSplice, alive, children, value
from upstreams import EchoApp, RawClient, assert_shed_error, get, shed, toml_text

Start = Callable[..., OpsSplice]
#: enough connections that both workers get some (all on one: a 2**-39 chance)
SPREAD = 40
#: an instance-wide connection limit: 2 + 2 with two workers
LIMIT = 4
#: connections offered against a limit: each worker sees more than its share, but for a
#: 2**-12 chance (that would only lower the admitted count, which is bounded from below
#: by one worker's share: with OFFERED > 2 * share one worker always gets its share)
OFFERED = 16


def config(sheds: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "domains": ["test"],
        "workers": 2,
        "listen": [{"address": "127.0.0.1:0"}],
        "admin": {"address": "127.0.0.1:0"},
        **extra,
        "sheds": sheds,
    }


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    running: list[OpsSplice] = []

    def make(cfg: dict[str, Any]) -> OpsSplice:
        running.append(OpsSplice(cfg, tmp_path))
        return running[-1]

    yield make
    for s in running:
        workers = children(s.pid)
        assert s.stop() == 0, s.stderr
        assert not [pid for pid in workers if alive(pid)], "workers outlived the supervisor"
        assert "Traceback" not in s.stderr, s.stderr


@pytest.fixture
def alpha(make_app: Callable[..., EchoApp]) -> EchoApp:
    return make_app("alpha")


def fetch(port: int, host: str) -> int:
    with RawClient(port) as c:
        c.send(get(host, extra="Connection: close\r\n"))
        return c.read_response().status


def offer(port: int, host: str, n: int) -> tuple[list[RawClient], int]:
    """Open ``n`` connections one after another, one keep-alive GET on each.

    Returns the admitted ones (200), still open and so still holding their slots, and
    how many were refused with 503 TOO_MANY_CONNECTIONS (those are closed).
    """
    held: list[RawClient] = []
    refused = 0
    try:
        for _ in range(n):
            held.append(c := RawClient(port))
            c.send(get(host))
            resp = c.read_response()
            if resp.status != 200:
                held.pop().close()
                assert_shed_error(resp, 503, "TOO_MANY_CONNECTIONS")
                refused += 1
    except BaseException:
        for c in held:
            c.close()
        raise
    return held, refused


def worker_pids(s: OpsSplice) -> dict[str, int]:
    got = s.scrape()
    pids = {k: v for k, v in got.items() if k[0] == "splice_worker_pid"}
    return {dict(labels)["worker"]: int(v) for (_, labels), v in pids.items()}


def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_two_workers_share_the_listener_and_metrics_are_summed(
    start: Start, alpha: EchoApp
) -> None:
    s = start(config({"alpha": shed(alpha)}))
    pids = worker_pids(s)
    assert sorted(pids.values()) == children(s.pid) and len(pids) == 2
    for _ in range(SPREAD):
        assert fetch(s.port, "alpha.test") == 200

    def all_counted() -> bool:
        return value(s.scrape(), "splice_connections_closed_total", outcome="OK") == SPREAD

    wait_until(all_counted)
    got = s.scrape()
    each = [value(got, "splice_worker_connections_accepted_total", worker=w) for w in "01"]
    assert all(n > 0 for n in each), each  # both workers accepted connections
    assert sum(each) == value(got, "splice_connections_accepted_total") == SPREAD
    assert value(got, "splice_workers") == 2
    assert value(got, "splice_gc_frozen_objects") > 2 * 5000  # each worker froze its own
    status, body = s.admin("/readyz")
    assert status == 200 and body.startswith("ready\nworkers: 2 of 2 ready")
    status, body = s.admin("/routes")
    doc = json.loads(body)
    assert doc["workers"] == 2 and doc["listen"][0]["address"] == f"127.0.0.1:{s.port}"


def test_a_killed_worker_is_restarted_and_nothing_is_lost(start: Start, alpha: EchoApp) -> None:
    s = start(config({"alpha": shed(alpha)}))
    for _ in range(10):
        assert fetch(s.port, "alpha.test") == 200
    wait_until(lambda: value(s.scrape(), "splice_connections_closed_total", outcome="OK") == 10)
    before = worker_pids(s)
    victim = before["0"]
    assert victim in children(s.pid)  # a child of the supervisor this test started
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: worker_pids(s).get("0", victim) != victim and len(worker_pids(s)) == 2)
    assert worker_pids(s)["1"] == before["1"]
    s.wait_log("worker 0 exited")
    got = s.scrape()
    assert value(got, "splice_worker_restarts_total") == 1
    assert value(got, "splice_connections_accepted_total") == 10  # the dead worker's count stays
    for _ in range(10):
        assert fetch(s.port, "alpha.test") == 200
    wait_until(lambda: value(s.scrape(), "splice_connections_accepted_total") == 20)


def test_reload_reaches_every_worker(
    start: Start, alpha: EchoApp, make_app: Callable[..., EchoApp]
) -> None:
    beta = make_app("beta")
    s = start(config({"alpha": shed(alpha)}))
    s.write(config({"alpha": shed(alpha), "beta": shed(beta)}))
    assert s.admin("/reload", "POST") == (200, "reloaded\n")
    assert all(fetch(s.port, "beta.test") == 200 for _ in range(SPREAD))
    s.write({**config({}), "listen": "nope"})
    status, body = s.admin("/reload", "POST")
    assert status == 400 and "listen" in body
    s.write(config({"alpha": shed(alpha)}))
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log("INFO reloaded", count=2)
    assert all(fetch(s.port, "beta.test") == 404 for _ in range(SPREAD))


def test_a_reload_names_the_settings_that_wait_for_the_next_start(
    start: Start, alpha: EchoApp
) -> None:
    s = start(config({"alpha": shed(alpha)}))
    s.write(config({"alpha": shed(alpha)}, workers=3, access_log=False))
    assert s.admin("/reload", "POST") == (200, "reloaded\n")
    s.wait_log("workers, access_log: takes effect at the next start")
    assert len(children(s.pid)) == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_is_forwarded_and_every_worker_exits(
    start: Start, alpha: EchoApp, sig: signal.Signals
) -> None:
    s = start(config({"alpha": shed(alpha)}))
    workers = children(s.pid)
    assert len(workers) == 2
    assert s.stop(sig) == 0, s.stderr
    assert not [pid for pid in workers if alive(pid)]
    assert s.stderr.count(f"{sig.name}: stopping") == 3  # the supervisor and each worker


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path, alpha: EchoApp) -> None:
    s = OpsSplice(config({"alpha": shed(alpha)}), tmp_path)
    workers = children(s.pid)
    assert len(workers) == 2
    assert s.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: not [pid for pid in workers if alive(pid)])  # they saw the channel close


def test_an_admin_port_in_use_is_named(start: Start, alpha: EchoApp, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for workers in (1, 2):
            cfg = config({"alpha": shed(alpha)}, workers=workers)
            path = tmp_path / f"c{workers}.toml"
            path.write_text(toml_text({**cfg, "admin": {"address": f"127.0.0.1:{port}"}}))
            r = subprocess.run(
                [sys.executable, "-m", "splice", "serve", "-c", str(path)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert r.returncode == 1
            assert f"admin.address 127.0.0.1:{port}: Address already in use" in r.stderr


def test_a_port_in_use_fails_before_any_worker_starts(tmp_path: Path, alpha: EchoApp) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        cfg = config({"alpha": shed(alpha)}, listen=[{"address": f"127.0.0.1:{port}"}])
        path = tmp_path / "c.toml"
        path.write_text(toml_text(cfg))
        r = subprocess.run(
            [sys.executable, "-m", "splice", "serve", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert r.returncode == 1
    assert "Address already in use" in r.stderr and "worker" not in r.stderr


@pytest.mark.parametrize(
    "limit",
    ["max_connections", "max_connections_per_shed", "sheds.alpha.max_connections"],
)
def test_a_connection_limit_holds_for_the_instance_not_for_each_worker(
    start: Start, alpha: EchoApp, limit: str
) -> None:
    if limit.startswith("sheds."):
        s = start(config({"alpha": shed(alpha, max_connections=LIMIT)}))
    else:
        s = start(config({"alpha": shed(alpha)}, **{limit: LIMIT}))
    assert len(worker_pids(s)) == 2
    held, refused = offer(s.port, "alpha.test", OFFERED)
    try:
        # each worker admits its share (2 of 4): never more than 4 in all (per worker it
        # would be up to 8); the kernel picks the worker, so one may refuse while the
        # other has room, but one of them always gets at least its share of 16
        assert LIMIT // 2 <= len(held) <= LIMIT, (len(held), refused)
        assert len(held) + refused == OFFERED
        for c in held:  # the admitted connections keep working
            c.send(get("alpha.test"))
            assert c.read_response().status == 200
    finally:
        for c in held:
            c.close()


def test_a_reload_splits_the_new_limit_between_the_workers(start: Start, alpha: EchoApp) -> None:
    s = start(config({"alpha": shed(alpha)}, max_connections=8))
    s.write(config({"alpha": shed(alpha)}, max_connections=2))
    assert s.admin("/reload", "POST") == (200, "reloaded\n")  # every worker has it now
    held, refused = offer(s.port, "alpha.test", OFFERED)
    try:
        # one each: 2 in all (the old shares, 4 each, or the new limit in each worker,
        # 2 each, would admit up to 8 or 4)
        assert 1 <= len(held) <= 2, (len(held), refused)
    finally:
        for c in held:
            c.close()


def test_without_a_workers_key_there_is_one_worker_per_core(start: Start, alpha: EchoApp) -> None:
    cores = len(os.sched_getaffinity(0))  # 2 in CI; with one core there is no supervisor
    s = start(config({"alpha": shed(alpha)}, workers=None))  # None: the key is left out
    assert "workers" not in s.config_path.read_text()
    assert len(children(s.pid)) == (cores if cores > 1 else 0)
    assert fetch(s.port, "alpha.test") == 200


def kill_worker_0(s: OpsSplice) -> None:
    """SIGKILL worker 0 (a child of the supervisor this test started); wait for the notice."""
    victim = worker_pids(s)["0"]
    assert victim in children(s.pid)
    os.kill(victim, signal.SIGKILL)
    s.wait_log("worker 0 exited")


def test_a_reload_while_a_worker_restarts_reaches_that_worker_too(
    start: Start, alpha: EchoApp, make_app: Callable[..., EchoApp]
) -> None:
    beta = make_app("beta")
    s = start(config({"alpha": shed(alpha)}))
    kill_worker_0(s)
    time.sleep(0.15)  # past the first backoff (0.1 s): worker 0 is starting, on the old config
    s.write(config({"alpha": shed(alpha), "beta": shed(beta)}))
    assert s.admin("/reload", "POST") == (200, "reloaded\n")
    wait_until(lambda: len(worker_pids(s)) == 2)
    # both workers serve beta: the restarted one was brought to the new config
    assert [fetch(s.port, "beta.test") for _ in range(SPREAD)] == [200] * SPREAD
    kill_worker_0(s)  # and a restart after the reload starts on the new config
    wait_until(lambda: len(worker_pids(s)) == 2)
    assert [fetch(s.port, "beta.test") for _ in range(SPREAD)] == [200] * SPREAD


def test_a_stop_while_a_worker_is_down_exits_0(tmp_path: Path, alpha: EchoApp) -> None:
    """A stop while a worker waits for its restart. (A stop just as it finished starting
    again sent it a second SIGTERM, which could land after its handlers were gone: see
    ``test_stop_signals_sent_again_during_the_exit_still_exit_0``.)"""
    s = OpsSplice(config({"alpha": shed(alpha)}), tmp_path)
    try:
        workers = children(s.pid)
        kill_worker_0(s)  # and stop at once: it waits out its restart backoff
        assert s.stop() == 0, s.stderr
        assert not [pid for pid in workers + children(s.pid) if alive(pid)]
        assert " ERROR " not in s.stderr and "Traceback" not in s.stderr, s.stderr
    finally:
        s.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_signals_sent_again_during_the_exit_still_exit_0(
    tmp_path: Path, alpha: EchoApp, workers: int
) -> None:
    """SIGTERM every 2 ms until the process is gone: a supervisor's forwarded signal and
    its own for a worker that had just started, or a service manager's next to ours.
    Once the handlers were removed on the way out, the next SIGTERM killed the process
    (-15; a supervisor counted that worker as failed and exited 1)."""
    s = OpsSplice(config({"alpha": shed(alpha)}, workers=workers), tmp_path)
    try:
        deadline = time.monotonic() + 10.0
        while s.proc.poll() is None and time.monotonic() < deadline:
            s.proc.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        assert s.stop() == 0, s.stderr
        assert "Traceback" not in s.stderr, s.stderr
    finally:
        s.stop()


def test_a_dead_workers_gauges_leave_the_sums_its_counters_stay(
    start: Start, alpha: EchoApp
) -> None:
    s = start(config({"alpha": shed(alpha)}, upstream_keepalive_timeout=60.0))
    for _ in range(SPREAD):
        assert fetch(s.port, "alpha.test") == 200
    wait_until(lambda: value(s.scrape(), "splice_connections_closed_total", outcome="OK") == SPREAD)
    before = s.scrape()
    survivor = worker_pids(s)["1"]
    kill_worker_0(s)
    wait_until(lambda: len(worker_pids(s)) == 2)
    after = s.scrape()
    # frozen objects: two live workers' worth, not the dead one's on top (about 3 x)
    frozen = value(after, "splice_gc_frozen_objects")
    assert frozen < 1.25 * value(before, "splice_gc_frozen_objects"), (before, after)
    # idle VM connections: at most what the survivor holds (the new worker has none)
    idle = value(after, "splice_upstream_idle")
    assert idle <= value(before, "splice_upstream_idle") and worker_pids(s)["1"] == survivor
    assert value(after, "splice_connections_active") == 0
    assert value(after, "splice_connections_accepted_total") == SPREAD  # counters stay


def reload_in_background(s: OpsSplice) -> Callable[[], tuple[int, str]]:
    """POST /reload from a thread; the returned function waits for its answer."""
    answer: list[tuple[int, str]] = []
    thread = threading.Thread(target=lambda: answer.append(s.admin("/reload", "POST")))
    thread.start()

    def wait() -> tuple[int, str]:
        thread.join(30.0)
        assert answer, "the reload did not answer"
        return answer[0]

    return wait


def test_a_worker_that_dies_during_a_reload_does_not_refuse_it(
    start: Start, alpha: EchoApp, make_app: Callable[..., EchoApp]
) -> None:
    """A worker's death is no refusal: the reload stands, and the worker is restarted on
    it. (It was refused, "worker 0: channel closed", while worker 1 had taken it: two
    configs served at once, and the restarted worker 0 on the old one.)"""
    beta = make_app("beta")
    s = start(config({"alpha": shed(alpha)}))
    victim = worker_pids(s)["0"]
    assert victim in children(s.pid)
    os.kill(victim, signal.SIGSTOP)  # it takes the reload call and never answers
    try:
        s.write(config({"alpha": shed(alpha), "beta": shed(beta)}))
        answer = reload_in_background(s)
        time.sleep(0.5)  # the call is on its way to the stopped worker
    finally:
        os.kill(victim, signal.SIGKILL)
    assert answer() == (200, "reloaded\n")
    s.wait_log("worker 0 exited")
    wait_until(lambda: len(worker_pids(s)) == 2 and victim not in worker_pids(s).values())
    assert [fetch(s.port, "beta.test") for _ in range(SPREAD)] == [200] * SPREAD


def test_a_worker_that_does_not_answer_a_reload_is_restarted_on_it(
    start: Start, alpha: EchoApp, make_app: Callable[..., EchoApp]
) -> None:
    """A hung worker (no answer within the call's deadline) may or may not have the new
    config: it is restarted, on the reloaded config. (The reload was refused with an
    empty reason, "worker 0: ", and worker 0 went on with whatever it had.)"""
    beta = make_app("beta")
    s = start(config({"alpha": shed(alpha)}))
    victim = worker_pids(s)["0"]
    assert victim in children(s.pid)
    os.kill(victim, signal.SIGSTOP)
    try:
        s.write(config({"alpha": shed(alpha), "beta": shed(beta)}))
        assert s.admin("/reload", "POST") == (200, "reloaded\n")  # after the 5 s deadline
        s.wait_log("worker 0 did not answer the reload")
    finally:
        os.kill(victim, signal.SIGCONT)  # it takes the supervisor's SIGTERM now
    s.wait_log("worker 0 exited")
    wait_until(lambda: len(worker_pids(s)) == 2 and victim not in worker_pids(s).values())
    assert [fetch(s.port, "beta.test") for _ in range(SPREAD)] == [200] * SPREAD


def test_a_reload_one_worker_refuses_is_undone_in_the_others(
    start: Start, alpha: EchoApp, tmp_path: Path
) -> None:
    """All or nothing: when one worker refuses a reload (here worker 0 cannot open the new
    listener's socket: its file limit is at its open count), the workers that took it go
    back to the running config. (Worker 1 kept the new listener: the reload said
    "refused" while half the instance served the new config.)"""
    s = start(config({"alpha": shed(alpha)}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        extra = probe.getsockname()[1]
    victim = worker_pids(s)["0"]
    assert victim in children(s.pid)
    limit = subprocess.run(
        ["prlimit", f"--pid={victim}", "--nofile", "--raw", "--noheadings", "--output=SOFT,HARD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    open_fds = len(os.listdir(f"/proc/{victim}/fd"))
    # the soft limit only: raising it again needs no privilege
    subprocess.run(["prlimit", f"--pid={victim}", f"--nofile={open_fds}:{limit[1]}"], check=True)
    listen = [{"address": "127.0.0.1:0"}, {"address": f"127.0.0.1:{extra}"}]
    s.write(config({"alpha": shed(alpha)}, listen=listen))
    try:
        status, body = s.admin("/reload", "POST")
    finally:  # it must accept connections again
        subprocess.run(["prlimit", f"--pid={victim}", f"--nofile={':'.join(limit)}"], check=True)
    assert status == 400 and "worker 0" in body and "Too many open files" in body, body
    with pytest.raises(ConnectionRefusedError):  # nobody listens on the refused listener
        socket.create_connection(("127.0.0.1", extra), timeout=2.0).close()
    s.wait_log("reload undone in worker 1")
    assert worker_pids(s)["0"] == victim  # it refused: nothing to restart
    assert all(fetch(s.port, "alpha.test") == 200 for _ in range(SPREAD))
