"""The scenarios: one function per scenario, one call per (target, round).

Each returns a flat dict of figures (None when not applicable) plus ``errors`` (a
count) and ``note``. Load generators are separate processes (wrk, curl, the Python
clients in bench/) so the orchestrator never competes with what it measures; the
proxy's CPU, RSS and fds are read from /proc around each run.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.proc import (
    children_cpu_seconds,
    cpu_seconds,
    fd_count,
    machine_seconds,
    rss_kib,
    run,
)
from bench.targets import (
    BIG_BYTES,
    DOMAIN,
    HOST,
    REPO,
    WS_HOST,
    Backend,
    Env,
    SpliceReplay,
    SpliceShed,
    SpliceStore,
    Target,
)

Figures = dict[str, Any]


@dataclass
class Settings:
    """Durations and sizes for one run; --quick and --full pick different ones."""

    rounds: int = 3
    duration: float = 8.0
    warmup: float = 0.5
    wrk_conns: int = 64
    ws_conns: int = 64
    ws_size: int = 1024
    tls_conns: int = 16
    bulk_bytes: int = BIG_BYTES
    held_levels: tuple[int, ...] = (2000, 10000)
    held_rounds: int = 3
    settle: float = 0.3
    #: coldcache: uncached shed names per round (one first request each, then again warm)
    cold_names: int = 150
    #: fwd-connect: concurrent CONNECT workers
    connect_conns: int = 16


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_better: bool
    fmt: str = "{:,.0f}"
    #: show ratios to the references in the table (False: context figures, like client CPU)
    ratio: bool = True


@dataclass
class Ctx:
    target: Target
    env: Env
    backend: Backend
    s: Settings


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    #: which endpoint the target must offer: "http", "ws", "tls", "fwd" or "shed";
    #: "fwd|http": either (a forward proxy, or direct for the no-proxy reference)
    needs: str
    metrics: tuple[Metric, ...]
    fn: Callable[[Ctx], Figures]
    #: the metric drawn in the throughput plot, and the latency ones
    throughput: str | None = None
    latency: tuple[str, ...] = ()
    #: targets without a proxy process have nothing to measure here
    proxy_only: bool = False
    rounds_attr: str = "rounds"
    notes: list[str] = field(default_factory=list)
    #: the target the second ratio in each cell divides by (None: --haproxy-ref)
    ref: str | None = None
    #: the only targets taking part (None: every target offering ``needs``)
    targets: tuple[str, ...] | None = None


# ---------------------------------------------------------------- helpers

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out: str) -> Figures:
    """req/s, total requests, latency percentiles (ms) and error counts from wrk output."""
    fig: Figures = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    fig["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    fig["requests"] = int(m.group(1)) if m else None
    for q, val, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        fig[f"p{q}_ms"] = float(val) * _UNIT[unit]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        fig["sock_errors"] = {
            k: int(v)
            for k, v in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True)
        }
        # a peer closing after "Connection: close" shows as read errors; only count the rest
        errors += int(m.group(1)) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        fig["non2xx"] = int(m.group(1))
        errors += int(m.group(1))
    fig["errors"] = errors
    return fig


def _cpu(ctx: Ctx) -> tuple[list[int], float]:
    pids = ctx.target.pids()
    return pids, cpu_seconds(pids)


def _python_client(ctx: Ctx, module: str, args: list[str], timeout: float) -> Figures:
    argv = [ctx.env.python, "-m", module, *args]
    r0, t0 = children_cpu_seconds(), time.monotonic()
    out = run(argv, timeout=timeout, cwd=REPO)
    r1, t1 = children_cpu_seconds(), time.monotonic()
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{module} gave no result (rc {out.returncode}): {out.stderr[-400:]}")
    result: Figures = json.loads(lines[-1])
    # the client's own CPU (% of one core over its run): near 100 it is the bottleneck
    used = r1 - r0
    result["client_cpu_pct"] = 100 * used / (t1 - t0) if t1 > t0 else None
    return result


# ---------------------------------------------------------------- scenarios


def _wrk(
    ctx: Ctx,
    close: bool,
    *,
    port: int | None = None,
    host: str = HOST,
    script: str | None = None,
) -> Figures:
    port = ctx.target.ep.http if port is None else port
    argv = ["wrk", "-t1", f"-c{ctx.s.wrk_conns}", f"-d{ctx.s.duration:g}s", "--latency"]
    argv += ["-H", f"Host: {host}"]
    if close:
        argv += ["-H", "Connection: close"]
    if script:
        argv += ["-s", script]
    argv.append(f"http://127.0.0.1:{port}/small")
    pids, c0 = _cpu(ctx)
    aux = ctx.target.aux_pids()
    vm = ctx.backend.pids()
    a0, v0, m0 = cpu_seconds(aux), cpu_seconds(vm), machine_seconds()
    w0 = children_cpu_seconds()
    out = run(argv, timeout=ctx.s.duration + 30)
    w1 = children_cpu_seconds()
    c1, a1, v1, m1 = cpu_seconds(pids), cpu_seconds(aux), cpu_seconds(vm), machine_seconds()
    fig = parse_wrk(out.stdout)
    if fig["rps"] is None:
        raise RuntimeError(f"wrk failed (rc {out.returncode}): {out.stderr[-300:]}")
    n = fig.get("requests") or 0
    fig["cpu_us_per_req"] = (c1 - c0) * 1e6 / n if pids and n else None
    if aux:  # the fake shed-server relaying for splice-connect: not the proxy's own CPU
        fig["aux_cpu_us_per_req"] = (a1 - a0) * 1e6 / n if n else None
    if n:  # the whole machine's bill per request (bench/README.md, "machine-wide")
        fig["wrk_us_per_req"] = (w1 - w0) * 1e6 / n
        fig["vm_us_per_req"] = (v1 - v0) * 1e6 / n
        for k in ("softirq", "idle", "steal"):
            fig[f"{k}_us_per_req"] = (m1[k] - m0[k]) * 1e6 / n
    return fig


def keepalive(ctx: Ctx) -> Figures:
    """Reused connections: what the proxy costs per request once routed."""
    return _wrk(ctx, close=False)


def newconn(ctx: Ctx) -> Figures:
    """A new TCP connection per request: accept + route + dial cost."""
    return _wrk(ctx, close=True)


def _curl_big(
    ctx: Ctx, extra: list[str], url: str, *, max_time: int = 30, stall_s: int = 3
) -> Figures:
    """One /big download; a stall is < 50 MB/s for ``stall_s`` seconds (record mode
    holds the last chunk back while the blob is fsynced: give it longer)."""
    argv = [
        "curl", "-s", "-o", "/dev/null", "--max-time", str(max_time), *extra,
        "--speed-limit", "50000000", "--speed-time", str(stall_s),
        "-w", "%{http_code} %{size_download} %{time_total}", url,
    ]  # fmt: skip
    pids, c0 = _cpu(ctx)
    out = run(argv, timeout=max_time + 15)
    c1 = cpu_seconds(pids)
    parts = out.stdout.split()
    if len(parts) != 3 or parts[0] != "200" or int(parts[1]) != ctx.s.bulk_bytes:
        # a short or stalled transfer has no meaningful rate: record it as a failure
        raise RuntimeError(
            f"curl rc {out.returncode} (code, bytes, seconds = {out.stdout}; "
            f"want {ctx.s.bulk_bytes} bytes) {out.stderr[-200:]}"
        )
    size, secs = int(parts[1]), float(parts[2])
    return {
        "gbps": size / secs / 1e9,
        "seconds": secs,
        "bytes": size,
        "cpu_s_per_gib": (c1 - c0) / (size / (1 << 30)) if pids else None,
        "errors": 0,
    }


def bulk(ctx: Ctx) -> Figures:
    """One 1 GiB download: the zero-copy path's throughput and CPU per GiB."""
    port = ctx.target.ep.http
    return _curl_big(ctx, ["-H", f"Host: {HOST}"], f"http://127.0.0.1:{port}/big")


def websocket(ctx: Ctx) -> Figures:
    """64 connections of 1 KiB echo round trips: frames relayed after an Upgrade."""
    s = ctx.s
    args = ["--port", str(ctx.target.ep.ws), "--host-header", WS_HOST]
    args += ["--conns", str(s.ws_conns), "--size", str(s.ws_size)]
    args += ["--duration", f"{s.duration:g}", "--warmup", f"{s.warmup:g}"]
    pids, c0 = _cpu(ctx)
    fig = _python_client(ctx, "bench.ws_load", args, timeout=s.duration + s.warmup + 40)
    c1 = cpu_seconds(pids)
    fig["cpu_us_per_msg"] = (c1 - c0) * 1e6 / fig["msgs"] if pids and fig["msgs"] else None
    if fig.get("opened", 0) < s.ws_conns:
        fig["errors"] = fig.get("errors", 0) + s.ws_conns - fig.get("opened", 0)
    return fig


def tls(ctx: Ctx) -> Figures:
    """New TLS connections through an SNI router: handshake latency and rate."""
    s = ctx.s
    args = ["--port", str(ctx.target.ep.tls), "--sni", HOST, "--conns", str(s.tls_conns)]
    args += ["--duration", f"{s.duration:g}", "--warmup", f"{s.warmup:g}"]
    pids, c0 = _cpu(ctx)
    fig = _python_client(ctx, "bench.tls_load", args, timeout=s.duration + s.warmup + 40)
    c1 = cpu_seconds(pids)
    fig["cpu_us_per_conn"] = (c1 - c0) * 1e6 / fig["done"] if pids and fig["done"] else None
    return fig


def _hold_once(ctx: Ctx, n: int) -> Figures:
    """Fresh proxy, baseline, open n idle keep-alive connections, read /proc, release."""
    ctx.target.restart(ctx.env, ctx.backend)
    port = ctx.target.ep.http
    assert port is not None
    common = ["--port", str(port), "--host-header", HOST]
    # warm the code paths and buffers once so the baseline is not a cold interpreter
    _python_client(ctx, "bench.hold", [*common, "--conns", "32", "--max-hold", "0.2"], 30)
    time.sleep(ctx.s.settle)
    pids = ctx.target.pids()
    rss0, fd0 = rss_kib(pids), fd_count(pids)
    argv = [ctx.env.python, "-m", "bench.hold", *common, "--conns", str(n), "--max-hold", "120"]
    p = subprocess.Popen(
        argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdin is not None
        ready, _, _ = select.select([p.stdout], [], [], 90)
        line = p.stdout.readline() if ready else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"hold client not ready: {line!r}")
        ok = int(line.split()[1])
        time.sleep(max(1.0, ctx.s.settle))
        pids = ctx.target.pids()
        rss1, fd1 = rss_kib(pids), fd_count(pids)
        alive = ctx.target.alive()
        p.stdin.write("\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {
        "conns": n,
        "ok": ok,
        "still_open": summary.get("still_open"),
        "open_s": summary.get("open_s"),
        "rss_base_kib": rss0,
        "rss_held_kib": rss1,
        "kib_per_conn": (rss1 - rss0) / ok if ok else None,
        "fds_per_conn": (fd1 - fd0) / ok if ok else None,
        "errors": (n - ok) + (0 if alive else 1),
    }


def held(ctx: Ctx) -> Figures:
    """Idle keep-alive connections held through the proxy: memory and fds per connection."""
    fig: Figures = {"errors": 0}
    for n in ctx.s.held_levels:
        one = _hold_once(ctx, n)
        fig[f"kib_per_conn_{n}"] = one["kib_per_conn"]
        fig[f"fds_per_conn_{n}"] = one["fds_per_conn"]
        fig[f"detail_{n}"] = one
        fig["errors"] += one["errors"]
    return fig


def coldcache(ctx: Ctx) -> Figures:
    """First request for a shed the resolver has not cached (shed-api resolver against
    the fake shed-server) vs the same names warm, vs one shed-server round trip."""
    t = ctx.target
    assert isinstance(t, SpliceShed) and t.ep.shed is not None
    names = t.take_cold(ctx.s.cold_names)
    watch = t.aux[0].pid if t.aux else 0
    args = ["--port", str(t.ep.shed), "--shed-port", str(t.shed_port), "--domain", DOMAIN]
    args += ["--names", ",".join(names), "--watch-pid", str(watch)]
    args += ["--rtt-count", str(max(20, ctx.s.cold_names))]
    pids, c0 = _cpu(ctx)
    fig = _python_client(ctx, "bench.first_req", args, timeout=60 + ctx.s.cold_names)
    c1 = cpu_seconds(pids)
    fig["cpu_us_per_req"] = (c1 - c0) * 1e6 / (2 * len(names)) if pids else None
    if fig.get("cold_p50_ms") is not None and fig.get("rtt_p50_ms") is not None:
        fig["cold_minus_warm_p50_ms"] = fig["cold_p50_ms"] - fig["warm_p50_ms"]
        fig["cold_over_rtt_p50_ms"] = fig["cold_p50_ms"] - fig["rtt_p50_ms"]
    if fig.get("shed_io_warm"):  # the warm path touched shed-server: a cache bug
        fig["note"] = f"warm phase made {fig['shed_io_warm']} shed-server syscalls"
    return fig


def _fwd_dest(ctx: Ctx, port: int) -> str:
    return f"{ctx.target.fwd_origin}:{port}"


def fwd_connect(ctx: Ctx) -> Figures:
    """Forward proxy: new CONNECT tunnels (+ a plain GET /small through each, then close)."""
    s = ctx.s
    dest = _fwd_dest(ctx, ctx.backend.http)
    args = ["--port", str(ctx.target.ep.fwd), "--dest", dest, "--conns", str(s.connect_conns)]
    args += ["--duration", f"{s.duration:g}", "--warmup", f"{s.warmup:g}"]
    pids, c0 = _cpu(ctx)
    fig = _python_client(ctx, "bench.connect_load", args, timeout=s.duration + s.warmup + 40)
    c1 = cpu_seconds(pids)
    fig["cpu_us_per_conn"] = (c1 - c0) * 1e6 / fig["done"] if pids and fig["done"] else None
    return fig


def fwd_bulk(ctx: Ctx) -> Figures:
    """Forward proxy: 1 GiB through a CONNECT tunnel (curl -p -x)."""
    dest = _fwd_dest(ctx, ctx.backend.http)
    extra = ["-p", "-x", f"http://127.0.0.1:{ctx.target.ep.fwd}"]
    return _curl_big(ctx, extra, f"http://{dest}/big")


def fwd_abs(ctx: Ctx) -> Figures:
    """Forward proxy: absolute-form keep-alive GETs (wrk with a Lua script setting the
    request target to http://ORIGIN:PORT/small)."""
    dest = _fwd_dest(ctx, ctx.backend.http)
    script = ctx.env.dir(ctx.target.name) / "absolute.lua"
    script.write_text(f'wrk.path = "http://{dest}/small"\n')
    return _wrk(ctx, close=False, port=ctx.target.ep.fwd, host=dest, script=str(script))


def _check_hit(ctx: Ctx, dest: str) -> None:
    """One GET /small through the replaying proxy: it must be a store hit."""
    conn = http.client.HTTPConnection("127.0.0.1", ctx.target.ep.fwd, timeout=10)
    try:
        conn.request("GET", f"http://{dest}/small", headers={"Host": dest})
        r = conn.getresponse()
        r.read()
        if r.status != 200 or r.getheader("X-Splice-Replay") != "hit":
            raise RuntimeError(f"not a replay hit: {r.status} {r.getheaders()}"[:300])
    finally:
        conn.close()


def replay(ctx: Ctx) -> Figures:
    """Keep-alive GET /small: from the store (splice-replay), forwarded live with the
    store off (splice-fwd, absolute-form), or nginx itself (direct)."""
    if ctx.target.ep.fwd is None:  # direct: the backend serving the same file
        return _wrk(ctx, close=False)
    if isinstance(ctx.target, SpliceReplay):
        _check_hit(ctx, _fwd_dest(ctx, ctx.backend.http))
    return fwd_abs(ctx)


def replay_bulk(ctx: Ctx) -> Figures:
    """The recorded 1 GiB /big replayed through splice (curl -x, absolute-form), or
    straight from nginx (direct). In replay mode a 200 can only be a store hit."""
    if ctx.target.ep.fwd is None:
        return bulk(ctx)
    extra = ["-x", f"http://127.0.0.1:{ctx.target.ep.fwd}"]
    dest = _fwd_dest(ctx, ctx.backend.http)
    return _curl_big(ctx, extra, f"http://{dest}/big", max_time=120, stall_s=10)


def record_cost(ctx: Ctx) -> Figures:
    """Recording vs the store off: keep-alive GETs of /small under a new query string
    each (every request a new key, so each is fetched, written, fsynced and indexed;
    one URL would let single-flight turn concurrent ones into replays), then one 1 GiB
    /big download (absolute-form, not CONNECT) when the disk has room."""
    t = ctx.target
    dest = _fwd_dest(ctx, ctx.backend.http)
    tag = time.monotonic_ns()  # new keys every run, so no round re-records the last one's
    script = ctx.env.dir(t.name) / "unique.lua"
    script.write_text(
        f"local n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format(nil, "
        f'"http://{dest}/small?r={tag}-" .. n)\nend\n'
    )
    e0 = t.store_entries() if isinstance(t, SpliceStore) else None
    fig = _wrk(ctx, close=False, port=t.ep.fwd, host=dest, script=str(script))
    e1 = t.store_entries() if isinstance(t, SpliceStore) else None
    if e0 is not None and e1 is not None and fig.get("requests"):
        fig["entries_per_req"] = (e1 - e0) / fig["requests"]
    if not ctx.env.store_bulk:
        fig["note"] = "bulk skipped: not enough free disk"
        return fig
    time.sleep(ctx.s.settle)
    extra = ["-x", f"http://127.0.0.1:{t.ep.fwd}"]
    big = _curl_big(ctx, extra, f"http://{dest}/big", max_time=180, stall_s=30)
    fig.update(gbps=big["gbps"], cpu_s_per_gib=big["cpu_s_per_gib"], bulk_s=big["seconds"])
    return fig


# ---------------------------------------------------------------- registry

_F2 = "{:,.2f}"
_F3 = "{:,.3f}"


#: the rest of the machine's time per request: the load generator, the VM's server, the
#: kernel's receive work outside any process (loopback TCP), and what nobody used. On
#: two shared cores the proxy's own CPU is one part of the bill (bench/README.md,
#: "Keep-alive: where a request's time goes, machine-wide")
_MACHINE: tuple[Metric, ...] = tuple(
    Metric(f"{k}_us_per_req", label, False, "{:,.1f}", ratio=False)
    for k, label in (
        ("wrk", "wrk µs/req"), ("vm", "VM µs/req"), ("softirq", "softirq µs/req"),
        ("idle", "idle µs/req"),
    )
)  # fmt: skip


def scenarios(s: Settings) -> list[Scenario]:
    """Every scenario in run order; held metrics depend on the levels chosen."""
    held_metrics: list[Metric] = []
    for n in s.held_levels:
        held_metrics.append(Metric(f"kib_per_conn_{n}", f"KiB/conn @{n}", False, "{:,.1f}"))
        held_metrics.append(Metric(f"fds_per_conn_{n}", f"fds/conn @{n}", False, _F2))
    return [
        Scenario(
            "keepalive", f"wrk -c{s.wrk_conns} keep-alive GET /small", "http",
            (Metric("rps", "req/s", True), Metric("p50_ms", "p50 ms", False, _F3),
             Metric("p99_ms", "p99 ms", False, _F3),
             Metric("cpu_us_per_req", "proxy CPU µs/req", False, "{:,.1f}"), *_MACHINE),
            keepalive, "rps", ("p50_ms", "p99_ms"),
        ),
        Scenario(
            "newconn", f"wrk -c{s.wrk_conns} Connection: close GET /small", "http",
            (Metric("rps", "req/s", True), Metric("p50_ms", "p50 ms", False, _F3),
             Metric("p99_ms", "p99 ms", False, _F3),
             Metric("cpu_us_per_req", "proxy CPU µs/req", False, "{:,.1f}"), *_MACHINE),
            newconn, "rps", ("p50_ms", "p99_ms"),
        ),
        Scenario(
            "bulk", "curl GET /big (1 GiB)", "http",
            (Metric("gbps", "GB/s", True, _F2),
             Metric("cpu_s_per_gib", "proxy CPU s/GiB", False, _F3)),
            bulk, "gbps",
        ),
        Scenario(
            "websocket", f"{s.ws_conns} WebSocket conns, {s.ws_size} B echo", "ws",
            (Metric("msgs_per_s", "msgs/s", True), Metric("p50_ms", "p50 ms", False, _F3),
             Metric("p99_ms", "p99 ms", False, _F3),
             Metric("cpu_us_per_msg", "proxy CPU µs/msg", False, "{:,.1f}")),
            websocket, "msgs_per_s", ("p50_ms", "p99_ms"),
        ),
        Scenario(
            "held", "idle keep-alive connections held", "http", tuple(held_metrics),
            held, None, (), proxy_only=True, rounds_attr="held_rounds",
        ),
        Scenario(
            "tls", f"{s.tls_conns} workers: new TLS conn + GET /small", "tls",
            (Metric("conns_per_s", "conns/s", True), Metric("hs_p50_ms", "hs p50 ms", False, _F3),
             Metric("hs_p99_ms", "hs p99 ms", False, _F3),
             Metric("cpu_us_per_conn", "proxy CPU µs/conn", False, "{:,.1f}")),
            tls, "conns_per_s", ("hs_p50_ms", "hs_p99_ms"),
        ),
        Scenario(
            "coldcache",
            f"first request, uncached vs cached shed ({s.cold_names} names, shed-api resolver)",
            "shed",
            (Metric("cold_p50_ms", "cold p50 ms", False, _F3),
             Metric("cold_p99_ms", "cold p99 ms", False, _F3),
             Metric("warm_p50_ms", "warm p50 ms", False, _F3),
             Metric("warm_p99_ms", "warm p99 ms", False, _F3),
             Metric("rtt_p50_ms", "shed-server RTT p50 ms", False, _F3),
             Metric("rtt_fresh_p50_ms", "RTT new conn p50 ms", False, _F3),
             Metric("cold_minus_warm_p50_ms", "cold - warm p50 ms", False, _F3),
             Metric("shed_io_warm", "shed-server syscalls (warm)", False)),
            coldcache, None, ("cold_p50_ms", "warm_p50_ms", "rtt_p50_ms"), proxy_only=True,
        ),
        Scenario(
            "fwd-connect", f"{s.connect_conns} workers: CONNECT + GET /small in the tunnel + close",
            "fwd",
            (Metric("tunnels_per_s", "tunnels/s", True),
             Metric("tunnel_p50_ms", "tunnel p50 ms", False, _F3),
             Metric("tunnel_p99_ms", "tunnel p99 ms", False, _F3),
             Metric("cpu_us_per_conn", "proxy CPU µs/tunnel", False, "{:,.1f}"),
             Metric("client_cpu_pct", "client CPU % of a core", False, "{:,.0f}", ratio=False)),
            fwd_connect, "tunnels_per_s", ("tunnel_p50_ms", "tunnel_p99_ms"), ref="tinyproxy",
        ),
        Scenario(
            "fwd-bulk", "curl -p -x: GET /big (1 GiB) through a CONNECT tunnel", "fwd",
            (Metric("gbps", "GB/s", True, _F2),
             Metric("cpu_s_per_gib", "proxy CPU s/GiB", False, _F3)),
            fwd_bulk, "gbps", ref="tinyproxy",
        ),
        Scenario(
            "fwd-abs", f"wrk -c{s.wrk_conns} absolute-form keep-alive GET http://ORIGIN/small",
            "fwd",
            (Metric("rps", "req/s", True), Metric("p50_ms", "p50 ms", False, _F3),
             Metric("p99_ms", "p99 ms", False, _F3),
             Metric("cpu_us_per_req", "proxy CPU µs/req", False, "{:,.1f}")),
            fwd_abs, "rps", ("p50_ms", "p99_ms"), ref="tinyproxy",
        ),
        Scenario(
            "replay", f"wrk -c{s.wrk_conns} keep-alive GET /small: store hits vs live vs nginx",
            "fwd|http",
            (Metric("rps", "req/s", True), Metric("p50_ms", "p50 ms", False, _F3),
             Metric("p99_ms", "p99 ms", False, _F3),
             Metric("cpu_us_per_req", "proxy CPU µs/req", False, "{:,.1f}")),
            replay, "rps", ("p50_ms", "p99_ms"), ref="splice-fwd",
            targets=("direct", "splice-fwd", "splice-replay"),
        ),
        Scenario(
            "replay-bulk", "curl -x: GET /big (1 GiB) replayed from the store vs nginx",
            "fwd|http",
            (Metric("gbps", "GB/s", True, _F2),
             Metric("cpu_s_per_gib", "proxy CPU s/GiB", False, _F3)),
            replay_bulk, "gbps", targets=("direct", "splice-replay"),
        ),
        Scenario(
            "record-cost",
            f"record mode vs store off: wrk -c{s.wrk_conns} keep-alive GET /small?new-key, "
            "then curl -x GET /big (1 GiB)",
            "fwd",
            (Metric("rps", "req/s", True), Metric("p50_ms", "p50 ms", False, _F3),
             Metric("p99_ms", "p99 ms", False, _F3),
             Metric("cpu_us_per_req", "proxy CPU µs/req", False, "{:,.1f}"),
             Metric("gbps", "bulk GB/s", True, _F2),
             Metric("cpu_s_per_gib", "bulk CPU s/GiB", False, _F3),
             Metric("entries_per_req", "store entries/req", True, _F3, ratio=False)),
            record_cost, "rps", ("p50_ms", "p99_ms"), ref="splice-fwd",
            targets=("splice-fwd", "splice-record"),
        ),
    ]  # fmt: skip


SCENARIO_NAMES = [sc.name for sc in scenarios(Settings())]
#: the record/replay store's (issue 11)
STORE_SCENARIOS = ("replay", "replay-bulk", "record-cost")
#: run by default (every one; --only picks a subset)
DEFAULT_SCENARIOS = list(SCENARIO_NAMES)
#: --quick must finish within 4 minutes (issue 6): the store's scenarios (no targets,
#: ~40 s: a 1 GiB recording, an fsync per recorded request) run in full or with --only
QUICK_SCENARIOS = [n for n in SCENARIO_NAMES if n not in STORE_SCENARIOS]
