"""The backend ("VM") and every target: config text, start, stop, and which PIDs to measure.

Each target is started with one worker (nginx worker_processes 1, haproxy nbthread 1,
caddy GOMAXPROCS=1, splice and sniproxy single process) on fresh loopback ports, and
routes by Host (HTTP) or SNI (TLS) exactly as splice does, so one client command line
serves every target. Configs are written into the run's temp dir and kept in the log.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.proc import (
    Managed,
    StartError,
    free_ports,
    interpreter,
    splice_build,
    tree,
    wait_port,
)

DOMAIN = "bench.test"
HOST = f"alpha.{DOMAIN}"  # the shed serving /small and /big (and TLS)
WS_HOST = f"wsecho.{DOMAIN}"  # the shed running the WebSocket echo server
SMALL_BYTES = 1024
BIG_BYTES = 1 << 30
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
REPO = Path(__file__).resolve().parent.parent
#: where `make compiled` installs splice built with mypyc (setup.py)
COMPILED = REPO / "build" / "compiled"
FAKE_SHED_SERVER = REPO / "scripts" / "fake_shed_server.py"
#: the forward-proxy origin name splice dials through ``[forward] hosts`` (no DNS)
FWD_ORIGIN = "origin.test"
#: distinct shed names the coldcache fake shed-server knows (c0 ... c<N-1>); each
#: round uses fresh ones, so every "cold" request really misses the resolver cache
COLD_NAMES = 1000
#: free disk the store scenarios need before they record /big: the replay store's
#: copy, the record store's, and a second one in tmp/ while /big is recorded again
STORE_MIN_FREE = 4 << 30


@dataclass
class Env:
    """What every target needs to know about this run."""

    work: Path
    nofile: int
    python: str = sys.executable
    splice_cmd: str = "{python} -m splice serve -c {config}"
    #: the compiled build's directory (make compiled) put first on splice's path; ""
    #: runs the source tree interpreted
    splice_path: str = ""
    #: seconds the fake shed-server waits before each answer (its --delay)
    shed_delay: float = 0.0
    #: the record/replay store may hold the 1 GiB /big (enough free disk; see run.py)
    store_bulk: bool = True

    def splice_env(self, *, interpreted: bool = False) -> dict[str, str]:
        """The environment of a splice process: the compiled build first on its path,
        and PYTHONSAFEPATH so that its working directory (the source tree, where it
        finds the fake shed-server) cannot shadow it; interpreted: the sources."""
        e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
        if self.splice_path and not interpreted:
            e["PYTHONPATH"], e["PYTHONSAFEPATH"] = self.splice_path, "1"
        return e

    def dir(self, name: str) -> Path:
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        return d


@dataclass
class Endpoints:
    """Loopback ports a client dials for each kind of traffic (None: not offered)."""

    http: int | None = None
    ws: int | None = None
    tls: int | None = None
    #: a forward proxy (absolute-form requests and CONNECT)
    fwd: int | None = None
    #: splice resolving through the (fake) shed-server: the coldcache scenario
    shed: int | None = None


def _nginx_head(d: Path, nofile: int, *, stream: bool = False) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    load = f"load_module {NGINX_STREAM_MODULE};\n" if stream else ""
    temps = "\n".join(
        f"  {k}_temp_path {d}/tmp/{k};"
        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (d / "tmp").mkdir(exist_ok=True)
    return f"""{load}{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {max(1024, nofile - 64)}; multi_accept on; }}
http {{
  access_log off;
  default_type application/octet-stream;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 300s; keepalive_requests 100000000;
{temps}
"""


def _nginx_argv(d: Path, conf: Path) -> list[str]:
    return ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")]


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


#: pipes for splice(2) in HAProxy: each costs 2 fds, and the default (maxconn/4)
#: would not fit 10k held connections under a 20k RLIMIT_NOFILE
HAPROXY_MAXPIPES = 256


def haproxy_maxconn(nofile: int) -> int:
    """The most connections HAProxy may take: 2 fds each plus its pipes must fit."""
    return (nofile - 2 * HAPROXY_MAXPIPES - 100) // 2


def held_cap(nofile: int) -> int:
    """The most held connections every target can take (an L4 proxy needs 2 fds each)."""
    return haproxy_maxconn(nofile) // 100 * 100


#: the backend's path that echoes the forwarding fields it received: each target is
#: probed once at start, so the table shows every L7 peer adds what splice adds
FORWARDED_PROBE = "/forwarded"
FORWARDED_ECHO = (
    "for=$http_x_forwarded_for host=$http_x_forwarded_host proto=$http_x_forwarded_proto"
)
#: what the VM should see from a proxy that adds them, for a client on 127.0.0.1
FORWARDED_WANT = f"for=127.0.0.1 host={HOST} proto=http"
#: and from one that relays the request's bytes as sent
FORWARDED_NONE = "for= host= proto="
#: nginx: the same three fields splice adds by default (``forwarded_headers``); set in
#: each location, since one proxy_set_header there drops every inherited one
_NGINX_FORWARDED = (
    "proxy_set_header Host $host; "
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; "
    "proxy_set_header X-Forwarded-Host $host; "
    "proxy_set_header X-Forwarded-Proto $scheme;"
)


def forwarded_note(port: int) -> str:
    """One GET of the backend's echo through a target: the forwarding fields the VM sees."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", FORWARDED_PROBE, headers={"Host": HOST})
        resp = conn.getresponse()
        body = resp.read().decode("ascii", "replace").strip()
    except (OSError, http.client.HTTPException) as e:
        return f"forwarding probe failed: {e!r}"[:200]
    finally:
        conn.close()
    if resp.status != 200:
        return f"forwarding probe: HTTP {resp.status}"
    if body == FORWARDED_WANT:
        return "VM sees X-Forwarded-For/-Host/-Proto"
    if body == FORWARDED_NONE:
        return "VM sees no X-Forwarded-* (the request's bytes as sent)"
    return f"VM sees {body!r}"


class Backend:
    """The "VM": nginx with /small (1 KiB) and /big (1 GiB sparse, sendfile) over HTTP and
    TLS, plus bench/ws_echo.py. Every target forwards here."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.procs: list[Managed] = []
        self.http = self.tls = self.ws = 0
        self.cert = self.key = Path()

    def start(self) -> None:
        d = self.env.dir("backend")
        www = d / "www"
        www.mkdir(exist_ok=True)
        (www / "small").write_bytes(b"x" * (SMALL_BYTES - 1) + b"\n")
        with (www / "big").open("wb") as f:
            f.truncate(BIG_BYTES)  # sparse: instant, no disk used
        with (www / "big").open("rb") as f:  # fault it into the page cache once, so the
            while f.readinto(bytearray(1 << 20)):  # first target measured is not
                pass  # the one that pays for it
        self.cert, self.key = d / "cert.pem", d / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
             "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST},DNS:*.{DOMAIN}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.http, self.tls, self.ws = free_ports(3)
        conf = d / "nginx.conf"
        conf.write_text(
            _nginx_head(d, self.env.nofile)
            + f"""  server {{
    listen 127.0.0.1:{self.http} backlog=4096;
    root {www};
    location = {FORWARDED_PROBE} {{
      default_type text/plain;
      return 200 "{FORWARDED_ECHO}";
    }}
  }}
  server {{
    listen 127.0.0.1:{self.tls} ssl backlog=4096;
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    root {www};
  }}
}}
"""
        )
        nginx = Managed("backend-nginx", _nginx_argv(d, conf), d / "nginx.log")
        self.procs.append(nginx)
        ws = Managed(
            "backend-ws-echo",
            [self.env.python, "-m", "bench.ws_echo", "--port", str(self.ws)],
            d / "ws_echo.log",
            cwd=REPO,
        )
        self.procs.append(ws)
        for port, p in ((self.http, nginx), (self.tls, nginx), (self.ws, ws)):
            wait_port(port, p)

    def endpoints(self) -> Endpoints:
        return Endpoints(http=self.http, ws=self.ws, tls=self.tls)

    def pids(self) -> list[int]:
        """The HTTP server's processes (nginx's master and worker): the VM's CPU."""
        return tree(p.pid for p in self.procs if p.name == "backend-nginx")

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


@dataclass
class Target:
    """One thing clients dial. Subclasses write a config and start processes."""

    name: str
    binary: str | None = None
    #: how this target routes TLS (None: no TLS listener)
    tls_how: str | None = None
    procs: list[Managed] = field(default_factory=list)
    ep: Endpoints = field(default_factory=Endpoints)
    notes: list[str] = field(default_factory=list)
    #: the scenarios this target takes part in (None: every one it has endpoints for)
    only: tuple[str, ...] | None = None
    #: helper processes (the fake shed-server) stopped with the target, not measured as it
    aux: list[Managed] = field(default_factory=list)
    #: forward proxies: the origin host name clients ask for (absolute-form, CONNECT)
    fwd_origin: str = ""
    #: one line for the targets table (variants: what differs from plain splice)
    about: str = ""
    #: the interpreter a Python target runs on (bench.proc.interpreter), once seen
    python: str = ""

    def missing(self) -> str | None:
        """Why this target cannot run here (None when it can)."""
        if self.binary and shutil.which(self.binary) is None:
            return f"{self.binary} not installed"
        return None

    def start(self, env: Env, be: Backend) -> Endpoints:
        self.ep = self._start(env, be)
        return self.ep

    def _start(self, env: Env, be: Backend) -> Endpoints:
        raise NotImplementedError

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        for p in reversed(self.aux):
            p.stop()
        self.aux.clear()

    def restart(self, env: Env, be: Backend) -> Endpoints:
        """A fresh process (fresh ports too: no TIME_WAIT bind surprises)."""
        self.stop()
        return self.start(env, be)

    def alive(self) -> bool:
        return all(p.alive() for p in self.procs + self.aux)

    def pids(self) -> list[int]:
        """The process tree to read CPU, RSS and fds from (empty: nothing to measure)."""
        return tree(p.pid for p in self.procs)

    def aux_pids(self) -> list[int]:
        """Helper processes (fake shed-server): their CPU is reported apart."""
        return tree(p.pid for p in self.aux)

    @contextlib.contextmanager
    def during(self, scenario: str) -> Iterator[dict[str, Any]]:
        """Wraps one scenario run; what the dict holds at exit joins the run's figures."""
        yield {}

    def version(self) -> str:
        return "-"

    def cleanup(self) -> None:
        """At the end of the run, after ``stop``: remove what must not outlive it."""

    def _note_interpreter(self, pid: int, what: str = "") -> None:
        """Name the Python build in the notes, once: it moves the figures as a commit
        does (``what``: more to say, such as splice's own build)."""
        if not self.python:
            self.python = interpreter(pid) + what
            self.notes.append(f"interpreter: {self.python}")

    def _spawn(
        self,
        env: Env,
        argv: list[str],
        ports: list[int],
        *,
        proc_env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Managed:
        d = env.dir(self.name)
        p = Managed(self.name, argv, d / "process.log", env=proc_env, cwd=cwd)
        self.procs.append(p)
        for port in ports:
            wait_port(port, p)
        return p


class Direct(Target):
    """No proxy: the client dials the backend. The baseline every ratio divides by."""

    def __init__(self) -> None:
        super().__init__("direct", tls_how="backend nginx")

    def _start(self, env: Env, be: Backend) -> Endpoints:
        return be.endpoints()

    def pids(self) -> list[int]:
        return []


class Splice(Target):
    """splice itself: HTTP listener (Host) plus a tls-passthrough listener (SNI).

    Subclasses are variants measured against it in the same run (splice-first,
    splice-2w, splice-admin, splice-connect, splice-shed, splice-fwd): each changes one
    config key and takes part only in the scenarios its issue asks about (``only``)."""

    #: run a tls-passthrough listener too (the base target only: TLS is its scenario)
    with_tls = True
    #: one process unless a variant says otherwise (splice's own default is one per core)
    workers = 1
    #: run the source tree even when the run measures the compiled build (splice-py)
    interpreted = False

    def __init__(self, name: str = "splice", *, only: tuple[str, ...] | None = None) -> None:
        super().__init__(name, tls_how="tls-passthrough (SNI)" if self.with_tls else None)
        self.only = only

    def missing(self) -> str | None:
        if importlib.util.find_spec("splice") is None:
            return "splice package not importable"
        if importlib.util.find_spec("splice.cli") is None:
            return "splice.cli not written yet"
        return None

    # -- what variants override: extra top-level keys, extra tables, helper processes
    def _top(self, env: Env, be: Backend) -> str:
        return ""

    def _tail(self, env: Env, be: Backend) -> str:
        return ""

    def _prepare(self, env: Env, be: Backend) -> None:
        """Start helpers (the fake shed-server) and pick their ports, before the config."""

    def _endpoints(self, http: int, tls: int | None) -> Endpoints:
        return Endpoints(http=http, ws=http, tls=tls)

    def _config(self, http: int, tls: int | None, env: Env, be: Backend) -> str:
        tls_listen = (
            f'\n[[listen]]\naddress = "127.0.0.1:{tls}"\nmode = "tls-passthrough"\n' if tls else ""
        )
        return f"""domains = ["{DOMAIN}"]
default_port = 8080
access_log = false  # like every peer here: no per-connection log line
workers = {self.workers}
{self._top(env, be)}
[[listen]]
address = "127.0.0.1:{http}"
mode = "http"
{tls_listen}
[sheds.alpha]
address = "127.0.0.1"
default_port = {be.http}
tls_port = {be.tls}

[sheds.wsecho]
address = "127.0.0.1"
default_port = {be.ws}
{self._tail(env, be)}"""

    def _start(self, env: Env, be: Backend) -> Endpoints:
        d = env.dir(self.name)
        self._prepare(env, be)
        http, tls = free_ports(2)
        conf = d / "splice.toml"
        tls_ports = (tls, None) if self.with_tls else (None,)
        for tls_port in tls_ports:  # fall back to HTTP only while TLS is not there yet
            conf.write_text(self._config(http, tls_port, env, be))
            argv = shlex.split(env.splice_cmd.format(python=env.python, config=conf))
            try:
                ports = [http] + ([tls_port] if tls_port else [])
                proc_env = env.splice_env(interpreted=self.interpreted)
                pid = self._spawn(env, argv, ports, proc_env=proc_env, cwd=REPO).pid
                self._note_interpreter(pid, f"; splice {splice_build(tree([pid]))}")
                return self._endpoints(http, tls_port)
            except StartError as e:
                self.stop()
                if tls_port is None:
                    raise
                self._prepare(env, be)  # stop() ended the helpers too
                self.notes.append(f"tls-passthrough listener refused; HTTP only: {e}"[:400])
        raise AssertionError("unreachable")

    def _fake_shed_server(self, env: Env, sheds: list[str]) -> int:
        """Start scripts/fake_shed_server.py (a helper: not in ``pids``); return its port."""
        (port,) = free_ports(1)
        argv = [env.python, str(FAKE_SHED_SERVER), "--port", str(port)]
        if env.shed_delay:
            argv += ["--delay", f"{env.shed_delay:g}"]
        for name in sheds:
            argv += ["--shed", f"{name}=127.0.0.1"]
        d = env.dir(self.name)
        p = Managed(f"{self.name}-fake-shed-server", argv, d / "fake_shed_server.log", cwd=REPO)
        self.aux.append(p)
        wait_port(port, p)
        return port

    def version(self) -> str:
        import splice

        return f"splice {splice.__version__}"


class SpliceFirst(Splice):
    """Issue 4: ``route_each_request = false``, the v0.1 behaviour (route a connection's
    first request, splice the rest blind): the ceiling per-request routing is held to."""

    with_tls = False

    def __init__(self) -> None:
        super().__init__("splice-first", only=("keepalive",))
        self.about = "route_each_request = false (v0.1: first request routed, rest spliced blind)"

    def _top(self, env: Env, be: Backend) -> str:
        return "route_each_request = false\n"


class SpliceBlind(Splice):
    """``frame_responses = "fronts"``: the bench's client is no front, so its answers are
    relayed blind, not framed (the default): what framing every answer costs."""

    with_tls = False

    def __init__(self) -> None:
        super().__init__("splice-blind", only=("keepalive",))
        self.about = 'frame_responses = "fronts" (answers to this client relayed blind)'

    def _top(self, env: Env, be: Backend) -> str:
        return 'frame_responses = "fronts"\n'


class SpliceInterpreted(Splice):
    """The same splice, interpreted: the sources instead of the mypyc build (setup.py),
    in the scenarios where the interpreter is most of the cost. What compiling buys."""

    with_tls = False
    interpreted = True

    def __init__(self) -> None:
        super().__init__("splice-py", only=("keepalive", "newconn"))
        self.about = "the same code interpreted (no mypyc): what compiling buys"


class SpliceWorkers(Splice):
    """Issue 8: ``workers = 2`` (a supervisor and two SO_REUSEPORT workers)."""

    with_tls = False

    def __init__(self, workers: int = 2) -> None:
        super().__init__(f"splice-{workers}w", only=("keepalive", "newconn"))
        self.about = "workers = 2 (supervisor + 2 SO_REUSEPORT workers)"
        self.workers = workers


class SpliceAdmin(Splice):
    """Issue 8: the admin listener on, and a scraper GETting /metrics once a second for
    the whole of each keepalive run (compare with plain ``splice``: no admin listener)."""

    with_tls = False
    scrape_every = 1.0

    def __init__(self) -> None:
        super().__init__("splice-admin", only=("keepalive",))
        self.about = "[admin] listener on, GET /metrics every 1 s during keepalive"
        self.admin_port = 0

    def _prepare(self, env: Env, be: Backend) -> None:
        (self.admin_port,) = free_ports(1)

    def _tail(self, env: Env, be: Backend) -> str:
        return f'\n[admin]\naddress = "127.0.0.1:{self.admin_port}"\n'

    def scrape(self) -> int:
        """One GET /metrics; the body size (raises on anything but 200)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"/metrics answered {r.status}")
            return len(body)
        finally:
            conn.close()

    @contextlib.contextmanager
    def during(self, scenario: str) -> Iterator[dict[str, Any]]:
        out: dict[str, Any] = {}
        stop = threading.Event()
        counts = {"ok": 0, "failed": 0, "bytes": 0}

        def loop() -> None:
            while not stop.wait(self.scrape_every):
                try:
                    counts["bytes"] = self.scrape()
                    counts["ok"] += 1
                except Exception:
                    counts["failed"] += 1

        th = threading.Thread(target=loop, name="metrics-scraper", daemon=True)
        th.start()
        try:
            yield out
        finally:
            stop.set()
            th.join(10)
            out.update(scrapes=counts["ok"], scrape_failures=counts["failed"],
                       metrics_bytes=counts["bytes"])  # fmt: skip


class SpliceConnect(Splice):
    """Issue 3: ``[dial] mode = "connect"``: every upstream through the shed-server's
    Connect API (here scripts/fake_shed_server.py, which relays in Python: its CPU is
    reported apart as ``aux_cpu_us_per_req``)."""

    with_tls = False

    def __init__(self) -> None:
        super().__init__("splice-connect", only=("keepalive", "newconn"))
        self.about = '[dial] mode = "connect" via the fake shed-server (Python relay)'
        self.shed_port = 0

    def _prepare(self, env: Env, be: Backend) -> None:
        self.shed_port = self._fake_shed_server(env, ["alpha", "wsecho"])

    def _tail(self, env: Env, be: Backend) -> str:
        return f"""
[dial]
mode = "connect"

[resolver]
shed_server = "http://127.0.0.1:{self.shed_port}"
"""


class SpliceShed(Splice):
    """Issues 3/6: ``[resolver] chain = ["shed-api"]`` against the fake shed-server
    (names alpha and c0..c999, all at 127.0.0.1), ``ttl`` an hour: the coldcache target."""

    with_tls = False

    def __init__(self) -> None:
        super().__init__("splice-shed", only=("coldcache",))
        self.about = '[resolver] chain = ["shed-api"] against the fake shed-server'
        self.shed_port = 0
        self.next_cold = 0  # the next unused cN name (each is cold exactly once)

    def _prepare(self, env: Env, be: Backend) -> None:
        self.next_cold = 0  # a fresh process has an empty cache
        names = ["alpha"] + [f"c{i}" for i in range(COLD_NAMES)]
        self.shed_port = self._fake_shed_server(env, names)

    def _config(self, http: int, tls: int | None, env: Env, be: Backend) -> str:
        return f"""domains = ["{DOMAIN}"]
default_port = {be.http}  # every shed-server shed serves /small here
access_log = false

[[listen]]
address = "127.0.0.1:{http}"
mode = "http"

[resolver]
chain = ["shed-api"]
shed_server = "http://127.0.0.1:{self.shed_port}"
ttl = 3600
stale = 3600
"""

    def _endpoints(self, http: int, tls: int | None) -> Endpoints:
        return Endpoints(shed=http)

    def take_cold(self, n: int) -> list[str]:
        """n shed names this process has never looked up."""
        if self.next_cold + n > COLD_NAMES:
            raise RuntimeError(f"only {COLD_NAMES - self.next_cold} cold names left")
        names = [f"c{i}" for i in range(self.next_cold, self.next_cold + n)]
        self.next_cold += n
        return names


class SpliceForward(Splice):
    """Issue 10: a ``mode = "forward"`` listener; ``[forward] allow = []`` (any host) on
    the backend's ports, ``hosts`` maps origin.test to 127.0.0.1 (dialled as written)."""

    with_tls = False

    def __init__(self, name: str = "splice-fwd", *, only: tuple[str, ...] | None = None) -> None:
        super().__init__(name, only=only)
        self.about = 'mode = "forward" listener, [forward] allow = [], hosts origin.test'
        self.fwd_origin = FWD_ORIGIN

    def _store(self, env: Env) -> str:
        """A ``[forward.store]`` table (empty: the store is off)."""
        return ""

    def _forward_config(self, port: int, be: Backend, store: str) -> str:
        return f"""access_log = false
workers = {self.workers}

[[listen]]
address = "127.0.0.1:{port}"
mode = "forward"

[forward]
allow = []
ports = [{be.http}, {be.tls}]
hosts = {{ "{FWD_ORIGIN}" = "127.0.0.1" }}
{store}"""

    def _config(self, http: int, tls: int | None, env: Env, be: Backend) -> str:
        return self._forward_config(http, be, self._store(env))

    def _endpoints(self, http: int, tls: int | None) -> Endpoints:
        return Endpoints(fwd=http)


def store_table(path: Path, mode: str) -> str:
    return f'\n[forward.store]\npath = "{path}"\nmode = "{mode}"\n'


class SpliceStore(SpliceForward):
    """Issue 11: ``splice-fwd`` with ``[forward.store]`` on, in ``mode``. The store lives
    in the run's temp dir and is deleted by ``cleanup`` (even with --keep-work: GiBs)."""

    def __init__(self, name: str, mode: str, only: tuple[str, ...]) -> None:
        super().__init__(name, only=only)
        self.mode = mode
        self.about = f'splice-fwd + [forward.store] mode = "{mode}" (store in the bench temp dir)'
        self.store_dir: Path | None = None

    def _store_dir(self, env: Env) -> Path:
        if self.store_dir is None:
            self.store_dir = env.dir(self.name) / "store"
        return self.store_dir

    def _store(self, env: Env) -> str:
        return store_table(self._store_dir(env), self.mode)

    def store_entries(self) -> int | None:
        """Rows in the store's index now (None: no index yet or unreadable)."""
        if self.store_dir is None or not (self.store_dir / "index.sqlite3").exists():
            return None
        try:
            db = sqlite3.connect(self.store_dir / "index.sqlite3", timeout=10)
            try:
                return int(db.execute("SELECT count(*) FROM entries").fetchone()[0])
            finally:
                db.close()
        except sqlite3.Error:
            return None

    def cleanup(self) -> None:
        if self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)


class SpliceRecord(SpliceStore):
    """Issue 11: ``mode = "record"``: forwards and stores every exchange (record-cost)."""

    def __init__(self) -> None:
        super().__init__("splice-record", "record", ("record-cost",))


class SpliceReplay(SpliceStore):
    """Issue 11: ``mode = "replay"`` on a store filled by one recording pass at start
    (a separate splice in ``record`` mode fetches /small, and /big when the disk has
    room, through itself, then stops): answers only from the store, never dials."""

    def __init__(self) -> None:
        super().__init__("splice-replay", "replay", ("replay", "replay-bulk"))
        self.recorded = False

    def _start(self, env: Env, be: Backend) -> Endpoints:
        if not self.recorded:  # once per run: a restart replays what is already there
            self._record_pass(env, be)
            self.recorded = True
        return super()._start(env, be)

    def _record_pass(self, env: Env, be: Backend) -> None:
        d = env.dir(self.name)
        (port,) = free_ports(1)
        conf = d / "record-pass.toml"
        conf.write_text(self._forward_config(port, be, store_table(self._store_dir(env), "record")))
        argv = shlex.split(env.splice_cmd.format(python=env.python, config=conf))
        p = Managed(
            f"{self.name}-record-pass", argv, d / "record-pass.log", env=env.splice_env(), cwd=REPO
        )
        try:
            wait_port(port, p)
            paths = [("/small", SMALL_BYTES)] + ([("/big", BIG_BYTES)] if env.store_bulk else [])
            for path, size in paths:
                url = f"http://{FWD_ORIGIN}:{be.http}{path}"
                t0 = time.monotonic()
                out = subprocess.run(
                    ["curl", "-s", "-o", "/dev/null", "--max-time", "300", "-x",
                     f"http://127.0.0.1:{port}", "-w", "%{http_code} %{size_download}", url],
                    capture_output=True, text=True, timeout=320, check=False,
                )  # fmt: skip
                if out.stdout.split() != ["200", str(size)]:
                    raise StartError(f"recording pass {path}: curl {out.stdout!r} {out.stderr}")
                secs = time.monotonic() - t0
                if path == "/big":
                    self.notes.append(f"recording pass: /big (1 GiB) recorded once in {secs:.1f} s")
        finally:
            p.stop()
        if not env.store_bulk:
            self.notes.append("recording pass: /small only (not enough free disk for /big)")


class Tinyproxy(Target):
    """tinyproxy (C, a thread per connection) in the foreground: the forward-proxy peer.
    It has no hosts map, so clients ask it for 127.0.0.1 (no DNS either way)."""

    def __init__(self) -> None:
        super().__init__("tinyproxy", binary="tinyproxy")
        self.about = "forward proxy peer, foreground, ConnectPort for the backend ports"
        self.fwd_origin = "127.0.0.1"

    def _start(self, env: Env, be: Backend) -> Endpoints:
        d = env.dir(self.name)
        (port,) = free_ports(1)
        conf = d / "tinyproxy.conf"
        user = "User root\nGroup root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"""Port {port}
Listen 127.0.0.1
Timeout 600
MaxClients 1024
LogFile "{d}/tinyproxy.log"
LogLevel Critical
PidFile "{d}/tinyproxy.pid"
DisableViaHeader Yes
ConnectPort {be.http}
ConnectPort {be.tls}
{user}""")
        self._spawn(env, ["tinyproxy", "-d", "-c", str(conf)], [port])
        return Endpoints(fwd=port)

    def version(self) -> str:
        return _version(["tinyproxy", "-v"])


class HaproxyTcp(Target):
    """HAProxy in mode tcp with option splice-auto: an L4 forwarder per port, and an
    SNI router (req.ssl_sni) for TLS. The zero-copy peer splice must match."""

    def __init__(self) -> None:
        super().__init__("haproxy-tcp", binary="haproxy", tls_how="req.ssl_sni")

    def _start(self, env: Env, be: Backend) -> Endpoints:
        d = env.dir(self.name)
        http, ws, tls = free_ports(3)
        maxconn = haproxy_maxconn(env.nofile)
        conf = d / "haproxy.cfg"
        conf.write_text(f"""global
  maxconn {maxconn}
  maxpipes {HAPROXY_MAXPIPES}
  nbthread 1

defaults
  mode tcp
  maxconn {maxconn}
  option splice-auto
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout tunnel 300s

frontend http_in
  bind 127.0.0.1:{http}
  default_backend alpha_http

frontend ws_in
  bind 127.0.0.1:{ws}
  default_backend wsecho

frontend tls_in
  bind 127.0.0.1:{tls}
  tcp-request inspect-delay 5s
  tcp-request content accept if {{ req.ssl_hello_type 1 }}
  use_backend alpha_tls if {{ req.ssl_sni -i {HOST} }}

backend alpha_http
  server s1 127.0.0.1:{be.http}

backend wsecho
  server s1 127.0.0.1:{be.ws}

backend alpha_tls
  server s1 127.0.0.1:{be.tls}
""")
        self._spawn(env, ["haproxy", "-db", "-f", str(conf)], [http, ws, tls])
        return Endpoints(http=http, ws=ws, tls=tls)

    def version(self) -> str:
        return _version(["haproxy", "-v"])


class HaproxyHttp(Target):
    """HAProxy in mode http routing on Host, with keep-alive and server connection reuse:
    the full L7 peer (parses every request)."""

    def __init__(self) -> None:
        super().__init__("haproxy-http", binary="haproxy")

    def _start(self, env: Env, be: Backend) -> Endpoints:
        d = env.dir(self.name)
        (http,) = free_ports(1)
        maxconn = haproxy_maxconn(env.nofile)
        conf = d / "haproxy.cfg"
        conf.write_text(f"""global
  maxconn {maxconn}
  maxpipes {HAPROXY_MAXPIPES}
  nbthread 1

defaults
  mode http
  maxconn {maxconn}
  option splice-auto
  option http-keep-alive
  http-reuse safe
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout tunnel 300s
  timeout http-request 10s
  timeout http-keep-alive 300s

frontend http_in
  bind 127.0.0.1:{http}
  # the same three fields splice adds by default (forwarded_headers): like for like
  option forwardfor
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Proto http
  use_backend alpha if {{ hdr(host) -i {HOST} }}
  use_backend wsecho if {{ hdr(host) -i {WS_HOST} }}

backend alpha
  server s1 127.0.0.1:{be.http}

backend wsecho
  server s1 127.0.0.1:{be.ws}
""")
        self._spawn(env, ["haproxy", "-db", "-f", str(conf)], [http])
        return Endpoints(http=http, ws=http)

    def version(self) -> str:
        return _version(["haproxy", "-v"])


class NginxProxy(Target):
    """nginx proxy_pass with upstream keepalive (server_name routing), and a stream
    server with ssl_preread routing on SNI."""

    def __init__(self) -> None:
        super().__init__("nginx", binary="nginx", tls_how="stream ssl_preread")

    def missing(self) -> str | None:
        why = super().missing()
        if why is None and not NGINX_STREAM_MODULE.exists():
            return f"{NGINX_STREAM_MODULE} missing (apt-get install libnginx-mod-stream)"
        return why

    def _start(self, env: Env, be: Backend) -> Endpoints:
        d = env.dir(self.name)
        http, tls = free_ports(2)
        conf = d / "nginx.conf"
        conf.write_text(
            _nginx_head(d, env.nofile, stream=True)
            + f"""  upstream alpha {{ server 127.0.0.1:{be.http}; keepalive 256; }}
  upstream wsecho {{ server 127.0.0.1:{be.ws}; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  proxy_http_version 1.1;
  proxy_max_temp_file_size 0;
  proxy_read_timeout 300s;
  proxy_send_timeout 300s;
  server {{
    listen 127.0.0.1:{http} backlog=4096 default_server;
    return 404;
  }}
  server {{
    listen 127.0.0.1:{http};
    server_name {HOST};
    location / {{
      proxy_pass http://alpha;
      proxy_set_header Connection "";
      {_NGINX_FORWARDED}
    }}
  }}
  server {{
    listen 127.0.0.1:{http};
    server_name {WS_HOST};
    location / {{
      proxy_pass http://wsecho;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      {_NGINX_FORWARDED}
    }}
  }}
}}
stream {{
  map $ssl_preread_server_name $tls_upstream {{
    {HOST} 127.0.0.1:{be.tls};
    default 127.0.0.1:9;
  }}
  server {{
    listen 127.0.0.1:{tls} backlog=4096;
    ssl_preread on;
    proxy_pass $tls_upstream;
    proxy_timeout 300s;
  }}
}}
"""
        )
        self._spawn(env, _nginx_argv(d, conf), [http, tls])
        return Endpoints(http=http, ws=http, tls=tls)

    def version(self) -> str:
        return _version(["nginx", "-v"])


class Caddy(Target):
    """Caddy reverse_proxy (Go; GOMAXPROCS=1 for one worker), site per Host."""

    def __init__(self) -> None:
        super().__init__("caddy", binary="caddy")

    def _start(self, env: Env, be: Backend) -> Endpoints:
        d = env.dir(self.name)
        (http,) = free_ports(1)
        conf = d / "Caddyfile"
        conf.write_text(f"""{{
\tadmin off
\tauto_https off
\tstorage file_system {d}/storage
\tservers {{
\t\ttimeouts {{
\t\t\tidle 5m
\t\t}}
\t}}
}}

http://{HOST}:{http} {{
\tbind 127.0.0.1
\treverse_proxy 127.0.0.1:{be.http}
}}

http://{WS_HOST}:{http} {{
\tbind 127.0.0.1
\treverse_proxy 127.0.0.1:{be.ws}
}}
""")
        envv = dict(os.environ)
        envv.update(
            GOMAXPROCS="1",
            HOME=str(d),
            XDG_CONFIG_HOME=str(d / "config"),
            XDG_DATA_HOME=str(d / "data"),
        )
        argv = ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"]
        self._spawn(env, argv, [http], proc_env=envv)
        return Endpoints(http=http, ws=http)

    def version(self) -> str:
        return "caddy " + _version(["caddy", "version"])


class Sniproxy(Target):
    """sniproxy: reads the first request's Host (http listener) or the SNI (tls listener),
    then relays bytes: the closest peer to splice's design."""

    def __init__(self) -> None:
        super().__init__("sniproxy", binary="sniproxy", tls_how="tls listener (SNI)")

    def _start(self, env: Env, be: Backend) -> Endpoints:
        d = env.dir(self.name)
        http, tls = free_ports(2)
        esc = HOST.replace(".", "\\\\.")
        wesc = WS_HOST.replace(".", "\\\\.")
        conf = d / "sniproxy.conf"
        conf.write_text(f"""pidfile {d}/sniproxy.pid
error_log {{
    filename {d}/error.log
    priority notice
}}
listener 127.0.0.1:{http} {{
    protocol http
    table http_hosts
}}
listener 127.0.0.1:{tls} {{
    protocol tls
    table tls_hosts
}}
table http_hosts {{
    ^{esc}$ 127.0.0.1:{be.http}
    ^{wesc}$ 127.0.0.1:{be.ws}
}}
table tls_hosts {{
    ^{esc}$ 127.0.0.1:{be.tls}
}}
""")
        argv = ["sniproxy", "-f", "-c", str(conf), "-n", str(env.nofile)]
        self._spawn(env, argv, [http, tls])
        return Endpoints(http=http, ws=http, tls=tls)

    def version(self) -> str:
        return _version(["sniproxy", "-V"])


class PyFloor(Target):
    """bench/floor_relay.py: a bare Python relay (own epoll loop, one fixed upstream, no
    routing) in the TLS scenario only. A peer splice cannot be faster than with the same
    interpreter: where it is behind a C peer, so is splice, whatever splice does."""

    def __init__(self) -> None:
        super().__init__("py-floor", tls_how="none: relays every connection to the backend")
        self.only = ("tls",)
        self.about = "the Python floor: epoll + recv/send, no routing, parsing or timers"

    def _start(self, env: Env, be: Backend) -> Endpoints:
        (port,) = free_ports(1)
        argv = [env.python, "-m", "bench.floor_relay", "--listen", str(port), "--to", str(be.tls)]
        self._note_interpreter(self._spawn(env, argv, [port], cwd=REPO).pid)
        return Endpoints(tls=port)

    def version(self) -> str:
        return "python " + sys.version.split()[0]


def all_targets() -> list[Target]:
    """Every target, in the order they are measured within a round: the peers, then
    splice's variants (each only in its own scenarios), then the forward proxies."""
    return [
        Direct(), Splice(), HaproxyTcp(), HaproxyHttp(), NginxProxy(), Caddy(), Sniproxy(),
        SpliceInterpreted(), SpliceFirst(), SpliceBlind(), SpliceWorkers(2), SpliceAdmin(),
        SpliceConnect(), SpliceShed(), SpliceForward(), Tinyproxy(), SpliceReplay(),
        SpliceRecord(), PyFloor(),
    ]  # fmt: skip


TARGET_NAMES = [t.name for t in all_targets()]
