"""The admin listener of one process, logging formats, ``splice routes`` and ``check --reach``.

splice runs as a subprocess with ``[admin] address = "127.0.0.1:0"``; the test reads
both ports from its log and talks HTTP to them over loopback.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ops_support import OpsSplice, ShedServerThread, http
from upstreams import EchoApp, RawClient, get, post, shed, toml_text, unused_port

Start = Callable[..., OpsSplice]


def config(sheds: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "domains": ["test"],
        "listen": [{"address": "127.0.0.1:0"}],
        "admin": {"address": "127.0.0.1:0"},
        **extra,
        "sheds": sheds,
    }


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    running: list[OpsSplice] = []

    def make(cfg: dict[str, Any], *flags: str) -> OpsSplice:
        workdir = tmp_path / f"s{len(running)}"
        workdir.mkdir()
        running.append(OpsSplice(cfg, workdir, *flags))
        return running[-1]

    yield make
    for s in running:
        assert s.stop() == 0, s.stderr
        assert "Traceback" not in s.stderr, s.stderr


@pytest.fixture
def shed_server() -> Iterator[ShedServerThread]:
    fake = ShedServerThread()
    yield fake
    fake.close()


@pytest.fixture
def alpha(make_app: Callable[..., EchoApp]) -> EchoApp:
    return make_app("alpha")


def fetch(port: int, host: str, request: bytes | None = None) -> int:
    with RawClient(port) as c:
        c.send(request or get(host, extra="Connection: close\r\n"))
        return c.read_response().status


def splice_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splice", *args], capture_output=True, text=True, timeout=60
    )


def test_healthz_and_readyz_for_a_static_chain(start: Start, alpha: EchoApp) -> None:
    s = start(config({"alpha": shed(alpha)}))
    assert s.admin("/healthz") == (200, "ok\n")
    status, body = s.admin("/readyz")
    assert status == 200
    assert f"listeners: bound (127.0.0.1:{s.port})" in body
    assert "resolver: static only" in body


def test_readyz_follows_shed_server_and_a_fresh_cache(
    start: Start, alpha: EchoApp, shed_server: ShedServerThread
) -> None:
    resolver = {"chain": ["shed-api"], "timeout": 0.5, "ttl": 60.0}
    gone = unused_port()
    down = {**resolver, "shed_server": f"http://127.0.0.1:{gone}"}
    s = start(config({"alpha": {"default_port": alpha.port}}, resolver=down))
    status, body = s.admin("/readyz")
    assert status == 503, body
    assert body.startswith("not ready") and "could not be reached" in body
    assert down["shed_server"] in body  # the operator's answer names it; a page does not
    # a browser's page says what failed, never where the shed-server listens; the log does
    with RawClient(s.port) as c:
        c.send(get("alpha.test", extra="Connection: close\r\n"))
        page = c.read_response()
    assert page.status == 503 and b"shed-server could not be reached" in page.body
    assert str(gone).encode() not in page.body
    s.wait_log(f"shed-server at 127.0.0.1:{gone} could not be reached (Connection refused)")

    shed_server.add_shed("alpha", "127.0.0.1")
    up = {**resolver, "shed_server": shed_server.url}
    s.write(config({"alpha": {"default_port": alpha.port}}, resolver=up))
    assert s.admin("/reload", "POST") == (200, "reloaded\n")
    status, body = s.admin("/readyz")
    assert status == 200 and f"shed-server at {shed_server.url} answers" in body

    assert fetch(s.port, "alpha.test") == 200  # now cached, fresh for 60 s
    shed_server.close()
    status, body = s.admin("/readyz")
    assert status == 200 and "1 fresh cache entries" in body


def test_routes_shows_sheds_declared_ports_and_the_resolver_cache(
    start: Start, alpha: EchoApp, shed_server: ShedServerThread, tmp_path: Path
) -> None:
    ports_dir = tmp_path / "ports"
    ports_dir.mkdir()
    (ports_dir / "beta.json").write_text(json.dumps([{"port": alpha.port, "label": "app"}]))
    shed_server.add_shed("beta", "127.0.0.1")
    resolver = {"chain": ["static", "shed-api"], "shed_server": shed_server.url,
                "ports_dir": str(ports_dir)}  # fmt: skip
    sheds = {
        "alpha": shed(alpha, tls_port=8443, ports=[{"port": 3000, "label": "web"}, 9000]),
        "beta": {"default_port": alpha.port, "dial": "direct"},
    }
    s = start(config(sheds, resolver=resolver))
    assert fetch(s.port, "beta.test") == 200

    status, body = s.admin("/routes")
    assert status == 200
    doc = json.loads(body)
    assert doc["listen"] == [{"address": f"127.0.0.1:{s.port}", "mode": "http"}]
    assert doc["resolvers"] == ["static", "shed-api"]
    a, b = doc["sheds"]
    assert a == {
        "name": "alpha", "address": "127.0.0.1", "default_port": alpha.port, "tls_port": 8443,
        "ports": [{"port": 3000, "label": "web"}, {"port": 9000, "label": ""}], "dial": "direct",
    }  # fmt: skip
    assert b["address"] is None and b["ports"] == [{"port": alpha.port, "label": "app"}]
    [entry] = doc["cache"]
    assert entry["shed"] == "beta" and entry["address"] == "127.0.0.1"
    assert entry["source"] == "shed-api" and 0 <= entry["age"] < 30

    check_routes_cli(f"127.0.0.1:{s.admin_port}", doc, sheds, tmp_path)


def check_routes_cli(admin: str, doc: dict[str, Any], sheds: Any, tmp_path: Path) -> None:
    """``splice routes`` prints ``doc`` as a table, as JSON, and finds the admin in a config."""
    text = splice_cli("routes", "--admin", admin)
    assert text.returncode == 0, text.stderr
    assert "3000 (web), 9000" in text.stdout and "shed-api" in text.stdout
    again = json.loads(splice_cli("routes", "--admin", admin, "--json").stdout)
    assert again["cache"][0].pop("age") >= doc["cache"][0].pop("age")
    assert again == doc
    other = tmp_path / "other.toml"
    other.write_text(toml_text({**config(sheds), "admin": {"address": admin}}))
    by_config = splice_cli("routes", "-c", str(other))
    assert by_config.returncode == 0 and "3000 (web), 9000" in by_config.stdout


def test_routes_cli_says_when_nothing_answers(tmp_path: Path) -> None:
    r = splice_cli("routes", "--admin", f"127.0.0.1:{unused_port()}")
    assert r.returncode == 1 and "no admin listener answers" in r.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_text({k: v for k, v in config({}).items() if k != "admin"}))
    r = splice_cli("routes", "-c", str(cfg))
    assert r.returncode == 1 and "admin: " in r.stderr and "--admin" in r.stderr


def test_reload_applies_a_config_refuses_a_broken_one_and_sighup_does_the_same(
    start: Start, alpha: EchoApp, make_app: Callable[..., EchoApp]
) -> None:
    beta, gamma = make_app("beta"), make_app("gamma")
    s = start(config({"alpha": shed(alpha)}))
    assert fetch(s.port, "beta.test") == 404
    s.write(config({"alpha": shed(alpha), "beta": shed(beta)}))
    assert s.admin("/reload", "POST") == (200, "reloaded\n")
    assert fetch(s.port, "beta.test") == 200

    s.config_path.write_text(s.config_path.read_text() + 'default_port = "x"\n')
    status, body = s.admin("/reload", "POST")
    assert status == 400 and body.startswith("reload refused: default_port:")
    assert fetch(s.port, "beta.test") == 200  # the running config stays

    s.write(config({"alpha": shed(alpha), "gamma": shed(gamma)}))
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log("INFO reloaded", count=2, timeout=5)
    assert fetch(s.port, "gamma.test") == 200
    assert s.admin("/reload") == (405, "use POST\n")
    assert s.admin("/metrics", "POST")[0] == 405
    assert s.admin("/nope")[0] == 404


def test_a_reload_names_the_settings_that_wait_for_the_next_start(
    start: Start, alpha: EchoApp
) -> None:
    """The access log, the pipe pool and the admin listener were set up at start: a
    reload that changes them says so each time, until the process starts again."""
    s = start(config({"alpha": shed(alpha)}))
    s.write(config({"alpha": shed(alpha)}, access_log=False, pipe_pool=8))
    for n in (1, 2):
        assert s.admin("/reload", "POST") == (200, "reloaded\n")
        s.wait_log("access_log, pipe_pool: takes effect at the next start", count=n)
    assert fetch(s.port, "alpha.test") == 200


def test_without_an_admin_table_there_is_no_admin_listener(start: Start, alpha: EchoApp) -> None:
    cfg = config({"alpha": shed(alpha)})
    del cfg["admin"]
    s = start(cfg)
    assert fetch(s.port, "alpha.test") == 200
    assert "admin on" not in s.stderr


@pytest.mark.parametrize("how", ["flag", "config"])
def test_json_logs_and_access_lines_carry_no_payload(
    start: Start, alpha: EchoApp, how: str
) -> None:
    marker = "PAYLOAD-MARKER-7f3a"
    extra = {"log_format": "json"} if how == "config" else {}
    flags = ("--log-format", "json") if how == "flag" else ()
    s = start(config({"alpha": shed(alpha)}, **extra), *flags)
    request = post("alpha.test", marker.encode() * 100, target=f"/{marker}")
    assert fetch(s.port, "alpha.test", request) == 200
    assert fetch(s.port, "nope.example") == 404
    assert s.stop() == 0
    records = [json.loads(line) for line in s.stderr.splitlines()]  # every line is JSON
    access = sorted((r for r in records if "outcome" in r), key=lambda r: r["outcome"])
    assert [(r["shed"], r["outcome"]) for r in access] == [("alpha", "OK"), ("", "UNKNOWN_HOST")]
    assert access[0]["bytes_up"] > 100 * len(marker) and access[0]["bytes_down"] > 0
    assert any(r.get("msg", "").startswith("listening on") for r in records)
    assert marker not in s.stderr


def test_check_reach(tmp_path: Path, shed_server: ShedServerThread) -> None:
    base = {k: v for k, v in config({}).items() if k != "admin"}
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base))
    r = splice_cli("check", "-c", str(path), "--reach")
    assert r.returncode == 0 and "not used by this config" in r.stdout

    dead = f"http://127.0.0.1:{unused_port()}"
    path.write_text(toml_text({**base, "resolver": {"chain": ["shed-api"], "shed_server": dead}}))
    r = splice_cli("check", "-c", str(path), "--reach")
    assert r.returncode == 1
    assert "could not be reached" in r.stderr and "Check [resolver] shed_server" in r.stderr

    path.write_text(toml_text({**base, "dial": {"mode": "connect"},
                               "resolver": {"shed_server": shed_server.url}}))  # fmt: skip
    r = splice_cli("check", "-c", str(path), "--reach")
    assert r.returncode == 0, r.stderr
    assert f"shed-server at {shed_server.url} answers (name mini-desktop" in r.stdout


def test_admin_answers_plain_http_clients(start: Start, alpha: EchoApp) -> None:
    s = start(config({"alpha": shed(alpha)}))
    assert http(s.admin_port, "/healthz?verbose=1") == (200, "ok\n")
    assert http(s.admin_port, "/healthz", "HEAD") == (200, "")  # probes that use HEAD
