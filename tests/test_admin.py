"""The admin listener of one process, logging formats, ``splice routes`` and ``check --reach``.

splice runs as a subprocess with ``[admin] address = "127.0.0.1:0"``; the test reads
both ports from its log and talks HTTP to them over loopback. Who may ask (Host, Origin,
``token_file``) is tested with raw requests that carry exactly the fields a browser, a
scraper or ``splice routes`` would.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ops_support import OpsSplice, ShedServerThread, http
from upstreams import EchoApp, RawClient, Response, get, post, shed, toml_text, unused_port

from splice.admin import AdminServer
from splice.config_ops import AdminConfig

Start = Callable[..., OpsSplice]
TOKEN = "tok-3f9a2c7e1b5d4a60-splice-admin"


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
    resolver: dict[str, Any] = {"chain": ["shed-api"], "timeout": 0.5, "ttl": 60.0}
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


# -- who may ask: Host, Origin, the bearer token ------------------------------------------


def ask(
    port: int, method: str, path: str, *fields: str, version: str = "1.1", ip: str = "127.0.0.1"
) -> Response:
    """One request on a new connection with exactly ``fields`` (no Host unless given)."""
    with RawClient(port, ip) as c:
        c.send(_head(method, path, *fields, "Connection: close", version=version))
        return c.read_response(method)


def _head(method: str, path: str, *fields: str, version: str = "1.1") -> bytes:
    body = "Content-Length: 0\r\n" if method == "POST" else ""
    lines = "".join(f"{f}\r\n" for f in fields)
    return f"{method} {path} HTTP/{version}\r\n{lines}{body}\r\n".encode()


def secret(tmp_path: Path, text: str = TOKEN + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "admin.token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_rebound_host_is_refused_and_the_connection_stays_usable(
    start: Start, alpha: EchoApp
) -> None:
    """DNS rebinding: evil.example, its name now resolving to 127.0.0.1, has the browser
    GET /routes; the browser still sends the page's Host."""
    s = start(config({"alpha": shed(alpha)}))
    p = s.admin_port
    with RawClient(p) as c:
        for host in ("evil.example", f"evil.example:{p}", f"localhost.evil.example:{p}",
                     f"127.0.0.1:{p ^ 1}", f"127.0.0.1:{p}@evil", "[::1", "[localhost]",
                     f"::1:{p}", f"127.0.0.1:{'9' * 4400}"):  # fmt: skip
            c.send(_head("GET", "/routes", f"Host: {host}"))
            r = c.read_response()
            assert r.status == 403, (host, r)
            assert r.body.startswith(b"forbidden: Host ") and b"allowed_hosts" in r.body
            assert b"alpha" not in r.body  # nothing of /routes
        c.send(_head("GET", "/routes", f"Host: 127.0.0.1:{p}"))  # the same connection
        r = c.read_response()
        assert r.status == 200 and json.loads(r.body)["sheds"][0]["name"] == "alpha"


def test_a_cross_site_post_does_not_reload(
    start: Start, alpha: EchoApp, make_app: Callable[..., EchoApp]
) -> None:
    """A page anywhere can make the browser POST to 127.0.0.1 (a "simple" request, no
    preflight); the browser says whose page it is in Origin."""
    beta = make_app("beta")
    s = start(config({"alpha": shed(alpha)}))
    s.write(config({"alpha": shed(alpha), "beta": shed(beta)}))
    p = s.admin_port
    for origin in ("https://evil.example", f"http://evil.example:{p}", "null", "http://localhost",
                   f"https://127.0.0.1:{p}.evil.example", f"http://127.0.0.1:{p ^ 1}",
                   f"file://127.0.0.1:{p}"):  # fmt: skip
        r = ask(p, "POST", "/reload", f"Host: 127.0.0.1:{p}", f"Origin: {origin}")
        assert r.status == 403 and r.body.startswith(b"forbidden: Origin "), (origin, r)
    # 127.0.0.1 as Host, a cross-site Origin: what a browser sends through DNS rebinding
    r = ask(p, "POST", "/reload", f"Host: localhost:{p}", "Origin: http://evil.example")
    assert r.status == 403
    assert fetch(s.port, "beta.test") == 404  # not reloaded
    assert "reloaded" not in s.stderr
    # an Origin that is this listener is no web page's: fine
    r = ask(p, "POST", "/reload", f"Host: 127.0.0.1:{p}", f"Origin: http://localhost:{p}")
    assert (r.status, r.body) == (200, b"reloaded\n")
    assert fetch(s.port, "beta.test") == 200


def test_loopback_hosts_and_a_missing_host_are_accepted(start: Start, alpha: EchoApp) -> None:
    """curl, Prometheus (``Host: <target>``: the configured address) and HTTP/1.0
    clients that send no Host at all."""
    s = start(config({"alpha": shed(alpha)}))
    p = s.admin_port
    for host in ("localhost", f"localhost:{p}", f"LocalHost:{p}", "127.0.0.1", f"127.0.0.1:{p}",
                 "[::1]", f"[::1]:{p}", f"[0:0::1]:{p}"):  # fmt: skip
        r = ask(p, "GET", "/routes", f"Host: {host}")
        assert r.status == 200, (host, r)
    assert ask(p, "GET", "/metrics", version="1.0").status == 200
    assert ask(p, "HEAD", "/healthz", version="1.0").status == 200


def test_a_listener_off_127_0_0_1_answers_to_its_own_address_and_allowed_hosts(
    start: Start, alpha: EchoApp
) -> None:
    """An admin bound to (say) a Tailscale address is reached by that address with no
    setting; a name for it (MagicDNS) is listed in ``allowed_hosts``."""
    admin = {"address": "127.0.0.2:0", "allowed_hosts": ["Admin.Example.ts.net", "[::2]"]}
    s = start(config({"alpha": shed(alpha)}, admin=admin))
    p = s.admin_port
    for host in (f"127.0.0.2:{p}", "127.0.0.2", f"admin.example.ts.net:{p}",
                 "admin.example.ts.net", f"[::2]:{p}"):  # fmt: skip
        assert ask(p, "GET", "/routes", f"Host: {host}", ip="127.0.0.2").status == 200, host
    origin = f"Origin: http://admin.example.ts.net:{p}"
    assert ask(p, "GET", "/routes", f"Host: 127.0.0.2:{p}", origin, ip="127.0.0.2").status == 200
    for host in (f"127.0.0.3:{p}", f"other.example.ts.net:{p}", f"10.0.0.1:{p}"):
        assert ask(p, "GET", "/routes", f"Host: {host}", ip="127.0.0.2").status == 403, host


def test_a_wildcard_bind_answers_to_the_address_a_connection_came_in_on() -> None:
    """``address = "0.0.0.0:8082"``: a scraper of the machine's address, or a kubelet
    probe of a pod's, sends that address as Host; it is the connection's local address.
    (Here the listener is bound to 127.0.0.2 under a config that says 0.0.0.0, which is
    what a wildcard bind looks like to a connection that came in on 127.0.0.2.)"""

    class Idle:
        async def ready(self) -> tuple[bool, str]:
            return True, "ok"

        async def snapshot(self) -> dict[str, Any]:
            return {}

        async def routes(self) -> dict[str, Any]:
            return {"sheds": []}

        async def reload(self) -> str | None:
            return None

    async def main() -> list[int]:
        server = AdminServer(Idle(), AdminConfig("0.0.0.0", 0))
        await server.start("127.0.0.2", 0)
        p = server.address[1]
        statuses = []
        try:
            for host in (f"127.0.0.2:{p}", f"0.0.0.0:{p}", f"127.0.0.3:{p}"):
                r = await asyncio.to_thread(
                    ask, p, "GET", "/routes", f"Host: {host}", ip="127.0.0.2"
                )
                statuses.append(r.status)
            return statuses
        finally:
            await server.close()

    assert asyncio.run(main()) == [200, 200, 403]


def test_a_token_guards_every_endpoint_but_healthz(
    start: Start, alpha: EchoApp, make_app: Callable[..., EchoApp], tmp_path: Path
) -> None:
    beta = make_app("beta")
    admin = {"address": "127.0.0.1:0", "token_file": str(secret(tmp_path))}
    s = start(config({"alpha": shed(alpha)}, admin=admin))
    s.write(config({"alpha": shed(alpha), "beta": shed(beta)}, admin=admin))
    p = s.admin_port
    host = f"Host: 127.0.0.1:{p}"
    assert s.admin("/healthz") == (200, "ok\n")  # liveness probes carry no token
    assert ask(p, "HEAD", "/healthz", host).status == 200
    for method, path in (("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/routes"),
                         ("POST", "/reload"), ("GET", "/nope")):  # fmt: skip
        r = ask(p, method, path, host)
        assert r.status == 401 and r.header("www-authenticate") == "Bearer", (path, r)
        assert r.body.startswith(b"unauthorized")
    assert fetch(s.port, "beta.test") == 404  # the POST /reload did nothing
    with RawClient(p) as c:  # wrong answers, then the right one on the same connection
        for auth in ("Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}",
                     TOKEN, "Bearer", f"Bearer {TOKEN}\tx"):  # fmt: skip
            c.send(_head("GET", "/metrics", host, f"Authorization: {auth}"))
            assert c.read_response().status == 401, auth
        c.send(_head("GET", "/metrics", host, f"Authorization: Bearer {TOKEN}"))
        assert c.read_response().status == 200
        c.send(_head("POST", "/reload", host, f"Authorization: bearer  {TOKEN}"))
        assert c.read_response().body == b"reloaded\n"
    assert fetch(s.port, "beta.test") == 200
    secret(tmp_path, "a-new-token\n")  # read with the config: a reload names it, keeps the old
    r = ask(p, "POST", "/reload", host, f"Authorization: Bearer {TOKEN}")
    assert r.body == b"reloaded\n"
    s.wait_log("admin: takes effect at the next start")
    assert ask(p, "GET", "/routes", host, f"Authorization: Bearer {TOKEN}").status == 200
    # a right token does not open the door to a web page
    r = ask(p, "GET", "/routes", "Host: evil.example", f"Authorization: Bearer {TOKEN}")
    assert r.status == 403
    assert TOKEN not in s.stderr


@pytest.mark.parametrize(
    ("text", "mode", "problem"),
    [
        (TOKEN, 0o644, "is not private (mode 0644: group or others may use it; chmod 600"),
        (TOKEN, 0o640, "is not private (mode 0640"),
        (TOKEN, 0o602, "is not private (mode 0602"),
        (None, 0o600, "cannot read {path}: No such file or directory"),
        ("\n", 0o600, "is empty"),
        ("", 0o400, "is empty"),
        (f"{TOKEN}\n{TOKEN}\n", 0o600, "must hold one token"),
        (f"{TOKEN} more", 0o600, "must hold one token"),
    ],
)
def test_a_token_file_open_to_others_missing_or_empty_stops_the_start(
    tmp_path: Path, text: str | None, mode: int, problem: str
) -> None:
    path = tmp_path / "admin.token" if text is None else secret(tmp_path, text, mode)
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_text(config({}, admin={"address": "127.0.0.1:0", "token_file": str(path)})))
    for command in ("check", "serve"):
        r = splice_cli(command, "-c", str(cfg))
        assert r.returncode == 1, r
        assert "admin.token_file: " in r.stderr and str(path) in r.stderr, r.stderr
        assert problem.format(path=path) in r.stderr, r.stderr
        assert TOKEN not in r.stderr


def test_allowed_hosts_and_token_file_are_checked_like_other_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    for admin, error in [
        ({"allowed_hosts": "a.example"}, "admin.allowed_hosts: must be a list"),
        ({"allowed_hosts": ["a.example:8082"]}, "admin.allowed_hosts[0]: 'a.example:8082' is not"),
        ({"allowed_hosts": ["ok.example", "http://b.example"]}, "admin.allowed_hosts[1]:"),
        ({"allowed_hosts": [7]}, "admin.allowed_hosts[0]: 7 is not a host name"),
        ({"token_file": ""}, "admin.token_file: must be the path"),
        ({"token_file": 5}, "admin.token_file: must be the path"),
        (
            {"tokenfile": "x"},
            "admin.tokenfile: unknown key (known: address, allowed_hosts, token_file)",
        ),
    ]:
        cfg.write_text(toml_text(config({}, admin=admin)))
        r = splice_cli("check", "-c", str(cfg))
        assert r.returncode == 1 and error in r.stderr, (admin, r.stderr)


def test_splice_routes_sends_the_token(start: Start, alpha: EchoApp, tmp_path: Path) -> None:
    token = secret(tmp_path)
    s = start(
        config({"alpha": shed(alpha)}, admin={"address": "127.0.0.1:0", "token_file": str(token)})
    )
    addr = f"127.0.0.1:{s.admin_port}"
    other = tmp_path / "other.toml"
    other.write_text(toml_text(config({}, admin={"address": addr, "token_file": str(token)})))
    by_config = splice_cli("routes", "-c", str(other))
    assert by_config.returncode == 0, by_config.stderr
    assert "alpha" in by_config.stdout
    by_flag = splice_cli("routes", "--admin", addr, "--token-file", str(token), "--json")
    assert by_flag.returncode == 0 and json.loads(by_flag.stdout)["sheds"][0]["name"] == "alpha"
    r = splice_cli("routes", "--admin", addr)
    assert r.returncode == 1
    assert (
        r.stderr == f"splice: the admin listener at {addr}: /routes answered HTTP 401: "
        "unauthorized: send Authorization: Bearer <[admin] token_file>\n"
    )
    token.chmod(0o644)
    r = splice_cli("routes", "--admin", addr, "--token-file", str(token))
    assert r.returncode == 1 and r.stderr.startswith(
        f"splice: --token-file: {token} is not private"
    )
