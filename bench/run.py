"""Bench entry point: splice vs direct vs peer proxies, interleaved, on loopback.

    python -m bench.run --quick                       # under 4 minutes
    python -m bench.run --full                        # ~35 minutes
    python -m bench.run --quick --only keepalive,tls --targets direct,splice,haproxy-tcp

Installs missing peers (apt) and matplotlib (pip), starts every process on its own
free loopback port, measures each (round, scenario, target) in turn, each round's
targets one place later than the round before, so drift hits every target alike,
stops everything it started (also on Ctrl-C), and writes
bench/results/<timestamp>.{json,md} + PNGs and latest.* copies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from bench import deps, report
from bench.proc import Managed, raise_nofile
from bench.scenarios import (
    DEFAULT_SCENARIOS,
    QUICK_SCENARIOS,
    SCENARIO_NAMES,
    STORE_SCENARIOS,
    Ctx,
    Scenario,
    Settings,
    scenarios,
)
from bench.targets import (
    COMPILED,
    REPO,
    STORE_MIN_FREE,
    TARGET_NAMES,
    Backend,
    Direct,
    Env,
    SpliceInterpreted,
    Target,
    all_targets,
    forwarded_note,
    held_cap,
)

PROFILES = {
    # quick holds only 10k (the issue-6 level); full adds 2k. Quick also leaves out the
    # store's scenarios (QUICK_SCENARIOS): under 4 minutes in all
    "quick": Settings(
        rounds=2,
        duration=2.0,
        warmup=0.3,
        settle=0.2,
        held_rounds=1,
        cold_names=40,
        held_levels=(10000,),
    ),
    "full": Settings(rounds=5, duration=8.0, warmup=0.5, held_rounds=3, cold_names=150),
}
#: and quick leaves out splice's variants that no target judges (their rows are `info`):
#: with them it took 247 s on a slower 2-CPU VM. ``--targets`` still runs them in quick
QUICK_SKIPS = ("splice-py", "splice-2w", "splice-connect")


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, weights: list[float]) -> None:
        self.total = sum(weights) or 1.0
        self.count = len(weights)
        self.done_w = 0.0
        self.done_n = 0
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()

    def show(self, label: str) -> None:
        frac = self.done_w / self.total
        bar = "#" * int(frac * 30)
        el = time.monotonic() - self.t0
        eta = f"~{el / frac - el:.0f}s left" if frac > 0.02 else ""
        line = f"[{bar:<30}] {self.done_n}/{self.count} {el:4.0f}s {eta:>12} {label}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line[: shutil.get_terminal_size().columns - 1])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def step(self, weight: float) -> None:
        self.done_w += weight
        self.done_n += 1

    def log(self, msg: str) -> None:
        sys.stderr.write(("\r\x1b[K" if self.tty else "") + msg + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def sysinfo(nofile: int) -> dict[str, Any]:
    """Everything needed to know whether two result files are comparable."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor() or "unknown",
    )
    mem = next((ln for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")), "")
    status = _cmd(["git", "-C", str(REPO), "status", "--porcelain"])

    def first(argv: list[str]) -> str:
        return (_cmd(argv).splitlines() or ["unknown"])[0]

    tools = {
        "wrk": first(["wrk", "-v"]),
        "curl": first(["curl", "--version"]),
        "openssl": first(["openssl", "version"]),
        "python": sys.version.split()[0],
    }
    for mod in ("uvloop", "matplotlib"):
        try:
            tools[mod] = __import__(mod).__version__
        except Exception:
            tools[mod] = "missing"
    return {
        "kernel": platform.release(),
        "uname": " ".join(os.uname()),
        "cpu": {"model": model, "count": os.cpu_count()},
        "mem_gib": int(mem.split()[1]) / 2**20 if mem else 0,
        "git": {
            "commit": _cmd(["git", "-C", str(REPO), "rev-parse", "HEAD"]) or "unknown",
            "branch": _cmd(["git", "-C", str(REPO), "rev-parse", "--abbrev-ref", "HEAD"]),
            "dirty": bool(status),
        },
        "tools": tools,
        "sysctl": {
            k: _read(f"/proc/sys/{k.replace('.', '/')}")
            for k in (
                "net.core.somaxconn",
                "net.ipv4.tcp_tw_reuse",
                "net.ipv4.ip_local_port_range",
                "net.ipv4.tcp_congestion_control",
            )
        },
        "rlimit_nofile": nofile,
        "loadavg_start": _read("/proc/loadavg"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds x 2 s, no store scenarios, no splice-py/-2w/-connect (default)",
    )
    mode.add_argument("--full", action="store_true", help="5 rounds x 8 s")
    ap.add_argument("--only", help=f"scenarios, comma-separated: {','.join(SCENARIO_NAMES)}")
    ap.add_argument("--targets", help=f"targets, comma-separated: {','.join(TARGET_NAMES)}")
    ap.add_argument("--rounds", type=int, help="override the profile's rounds")
    ap.add_argument("--duration", type=float, help="override seconds per timed run")
    ap.add_argument("--held", help="held connection counts, e.g. 2000,10000")
    ap.add_argument(
        "--haproxy-ref", default="haproxy-tcp", choices=["haproxy-tcp", "haproxy-http"],
        help="the HAProxy column ratios divide by",
    )  # fmt: skip
    ap.add_argument("--splice-cmd", help="how to start splice; {python} and {config} expand")
    ap.add_argument(
        "--build", choices=["mypyc", "interpreted"], default="mypyc",
        help=f"splice compiled (from {COMPILED.relative_to(REPO)}/, make compiled) or the sources",
    )  # fmt: skip
    ap.add_argument(
        "--shed-delay", type=float, default=0.0,
        help="seconds the fake shed-server waits before each answer (a remote shed-server)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--no-install", action="store_true", help="do not apt/pip install")
    ap.add_argument("--keep-work", action="store_true", help="keep the temp dir (configs, logs)")
    a = ap.parse_args(argv)
    for opt, names in (("only", SCENARIO_NAMES), ("targets", TARGET_NAMES)):
        val = getattr(a, opt)
        if val:
            bad = [x for x in val.split(",") if x not in names]
            if bad:
                ap.error(f"--{opt}: unknown {','.join(bad)} (choose from {','.join(names)})")
    return a


def compiled_problem() -> str | None:
    """Why the compiled build cannot be measured as this tree's splice (None: it can)."""
    stamp = COMPILED / ".built"
    if not stamp.exists():
        return f"no compiled build in {COMPILED}: run `make compiled` (or pass --build interpreted)"
    built = stamp.stat().st_mtime
    sources = [*(REPO / "splice").rglob("*.py"), *(REPO / "splice").rglob("*.c")]
    stale = [p for p in sources if p.stat().st_mtime > built]
    if stale:
        return f"{COMPILED} is older than {stale[0].relative_to(REPO)}: run `make compiled`"
    return None


def settings_for(a: argparse.Namespace, nofile: int) -> tuple[Settings, list[str]]:
    s = Settings(**asdict(PROFILES["full" if a.full else "quick"]))
    notes = []
    if a.rounds:
        s.rounds = a.rounds
        s.held_rounds = min(s.held_rounds, a.rounds)
    if a.duration:
        s.duration = a.duration
    if a.held:
        s.held_levels = tuple(int(x) for x in a.held.split(","))
    cap = held_cap(nofile)
    if any(n > cap for n in s.held_levels):
        notes.append(
            f"held connections capped at {cap} (RLIMIT_NOFILE hard limit {nofile}: an L4 proxy "
            "needs 2 fds per held connection); labels keep the requested count"
        )
    return s, notes


def _weight(sc: Scenario, s: Settings) -> float:
    if sc.name == "held":
        return sum(2 + n / 4000 for n in s.held_levels)
    if sc.name == "bulk":
        return 2.0
    if sc.name == "fwd-bulk":
        return 2.5
    if sc.name == "replay-bulk":
        return 3.0
    if sc.name == "record-cost":
        return s.duration + 0.8 + 5.0
    if sc.name == "coldcache":
        return 1.0 + s.cold_names * 0.01
    return s.duration + s.warmup + 0.8


def _takes_part(sc: Scenario, t: Target) -> bool:
    """Whether ``t`` may run ``sc`` at all (before it is started: no endpoints yet)."""
    if sc.proxy_only and isinstance(t, Direct):
        return False
    if sc.targets is not None and t.name not in sc.targets:
        return False
    return t.only is None or sc.name in t.only


def rotated(live: list[Target], r: int) -> list[Target]:
    """The targets in round ``r``'s order: each round starts one place later, so no
    target always runs first after a scenario change (a newconn run leaves ~10^5
    sockets in TIME_WAIT) or always right after the same neighbour."""
    k = r % len(live)
    return live[k:] + live[:k]


def _supports(sc: Scenario, t: Target) -> bool:
    return _takes_part(sc, t) and any(
        getattr(t.ep, need) is not None for need in sc.needs.split("|")
    )


def store_disk(work: Path) -> tuple[bool, str]:
    """Whether the store scenarios may record the 1 GiB /big here, and a note if not."""
    free = shutil.disk_usage(work).free
    if free >= STORE_MIN_FREE:
        return True, ""
    return False, (
        f"store bulk skipped: {free / 2**30:.1f} GiB free in {work} (< "
        f"{STORE_MIN_FREE / 2**30:.0f} GiB): no /big recorded, replay-bulk not run, "
        "record-cost measures /small only"
    )


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    mode = "full" if a.full else "quick"
    a.out.mkdir(parents=True, exist_ok=True)
    warnings = [] if a.no_install else deps.ensure(a.out / "install.log")
    for w in warnings:
        print(f"bench: warning: {w}", file=sys.stderr)
    if deps.essential_missing():
        print(f"bench: cannot run without {deps.essential_missing()}", file=sys.stderr)
        return 2
    nofile = raise_nofile()
    s, setting_notes = settings_for(a, nofile)
    cap = held_cap(nofile)
    s.held_levels = tuple(s.held_levels)
    actual_levels = {n: min(n, cap) for n in s.held_levels}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second ^C must not
            signal.signal(sig, signal.SIG_IGN)  # cut the cleanup short
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: it may be
        signal.signal(sig, on_signal)  # ignored when started in the background

    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="splice-bench-"))
    env = Env(work=work, nofile=nofile)
    if a.splice_cmd:
        env.splice_cmd = a.splice_cmd
    if a.build == "mypyc":
        problem = compiled_problem()
        if problem:
            print(f"bench: {problem}", file=sys.stderr)
            return 2
        env.splice_path = str(COMPILED)
    env.shed_delay = a.shed_delay
    if a.targets:
        wanted = a.targets.split(",")
    else:
        wanted = [n for n in TARGET_NAMES if a.full or n not in QUICK_SKIPS]
    default = DEFAULT_SCENARIOS if a.full else QUICK_SCENARIOS
    chosen = a.only.split(",") if a.only else default
    scs = [sc for sc in scenarios(s) if sc.name in chosen]
    # a target no chosen scenario takes is not started (splice-replay records 1 GiB)
    targets = [
        t for t in all_targets() if t.name in wanted and any(_takes_part(sc, t) for sc in scs)
    ]
    if not env.splice_path:  # splice itself runs interpreted: splice-py would repeat it
        targets = [t for t in targets if not isinstance(t, SpliceInterpreted)]
    store_note = ""
    uses_store = any(sc.name in STORE_SCENARIOS for sc in scs)
    if uses_store:
        env.store_bulk, store_note = store_disk(work)
        if store_note:
            print(f"bench: {store_note}", file=sys.stderr)

    meta: dict[str, Any] = sysinfo(nofile)
    meta.update(
        started=stamp,
        mode=mode,
        argv=sys.argv,
        settings=asdict(s),
        held_actual=actual_levels,
        haproxy_ref=a.haproxy_ref,
        splice_build=a.build,
        warnings=warnings + setting_notes + ([store_note] if store_note else []),
    )
    res: dict[str, Any] = {"meta": meta, "targets": {}, "scenarios": {}}
    meta["store_disk_free_gib"] = shutil.disk_usage(work).free / 2**30 if uses_store else None
    for sc in scs:
        note = " ".join(setting_notes) if sc.name == "held" else notes_for(sc.name, a)
        if store_note and sc.name in ("replay-bulk", "record-cost"):
            note = f"**{store_note}.** {note}"
        res["scenarios"][sc.name] = {
            "title": sc.title,
            "metrics": [asdict(m) for m in sc.metrics],
            "throughput": sc.throughput,
            "latency": list(sc.latency),
            "raw": {},
            "note": note,
            "ref": sc.ref,
        }
    t_start = time.monotonic()
    backend = Backend(env)
    progress: Progress | None = None
    interrupted = False
    try:
        print(f"bench: {mode}, work dir {work}, RLIMIT_NOFILE {nofile}", file=sys.stderr)
        backend.start()
        live: list[Target] = []
        for t in targets:
            entry = res["targets"][t.name] = {
                "version": t.version() if t.missing() is None else "-",
                "tls_how": t.tls_how,
                "skipped": t.missing(),
                "notes": t.notes,
                "about": t.about,
            }
            if entry["skipped"]:
                print(f"bench: skip {t.name}: {entry['skipped']}", file=sys.stderr)
                continue
            try:
                t.start(env, backend)
                live.append(t)
                if t.ep.http and not t.fwd_origin:
                    t.notes.append(forwarded_note(t.ep.http))
            except Exception as e:
                entry["skipped"] = f"failed to start: {e}"[:600]
                print(f"bench: skip {t.name}: {entry['skipped']}", file=sys.stderr)
        if not live:
            raise RuntimeError("no target could start")
        rounds = max(getattr(s, sc.rounds_attr) for sc in scs)
        plan = [
            (r, sc, t)
            for r in range(rounds)
            for sc in scs
            if r < getattr(s, sc.rounds_attr)
            if env.store_bulk or sc.name != "replay-bulk"
            for t in rotated(live, r)
            if _supports(sc, t)
        ]
        progress = Progress([_weight(sc, s) for _, sc, _ in plan])
        run_settings = Settings(**{**asdict(s), "held_levels": tuple(actual_levels.values())})
        for r, sc, t in plan:
            progress.show(f"r{r + 1} {sc.name} {t.name}")
            figs = measure(sc, t, env, backend, run_settings, progress)
            if sc.name == "held":  # label by requested count, not the capped one
                figs = {_relabel(k, actual_levels): v for k, v in figs.items()}
            figs["round"] = r + 1
            res["scenarios"][sc.name]["raw"].setdefault(t.name, []).append(figs)
            progress.step(_weight(sc, s))
            time.sleep(s.settle)
        progress.show("done")
    except KeyboardInterrupt:
        interrupted = True
        print(
            "\nbench: interrupted; stopping processes and writing partial results", file=sys.stderr
        )
    finally:
        if progress:
            progress.close()
        for t in targets:
            t.stop()
            t.cleanup()  # the record/replay stores: GiBs, gone even with --keep-work
        backend.stop()
        Managed.stop_all()
        if a.keep_work:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    meta["interrupted"] = interrupted
    meta["elapsed_s"] = time.monotonic() - t_start
    meta["loadavg_end"] = _read("/proc/loadavg")
    write(res, a.out, stamp)
    return 130 if interrupted else 0


def notes_for(name: str, a: argparse.Namespace) -> str:
    """The explanation printed above a scenario's table."""
    if name == "coldcache":
        return (
            '`splice-shed`: `[resolver] chain = ["shed-api"]`, ttl 1 h, against '
            f"`scripts/fake_shed_server.py` (delay {a.shed_delay * 1000:g} ms). *cold* = the first "
            "request ever for a shed name (new TCP connection, GET /small, until the last body "
            "byte), one per name; *warm* = the same names again; *RTT* = `GET /api/sheds/NAME` "
            "straight to the fake on one kept-alive connection (what the resolver pays per "
            "lookup), and on a new connection each. *shed-server syscalls (warm)*: read+write "
            "syscalls of the fake over the warm phase (/proc/PID/io); 0 = warm adds no I/O."
        )
    if name.startswith("fwd-"):
        return (
            "Forward proxies. `splice-fwd` is asked for `origin.test` (a `[forward] hosts` "
            "entry), tinyproxy for `127.0.0.1` (it has no hosts map): no DNS either way. "
            "Cells: `value (xtinyproxy)`."
            + {
                "fwd-connect": " The client is one Python process: when its CPU nears 100 % of "
                "a core it, not the proxy, sets the rate (the ratio is then a lower bound).",
                "fwd-abs": " tinyproxy closes the client connection after every response (no "
                "client keep-alive; wrk reconnects), so its row is really new connections.",
            }.get(name, "")
        )
    if name in STORE_SCENARIOS:
        return {
            "replay": 'Store hits: `splice-replay` (`[forward.store] mode = "replay"`, filled '
            "by one recording pass at start; a replay never dials) vs `splice-fwd` forwarding "
            "live with the store off (same absolute-form wrk script) vs nginx serving the file "
            "(`direct`). Each run first checks one GET carries `X-Splice-Replay: hit`. Cells: "
            "`value (xdirect, xsplice-fwd)`.",
            "replay-bulk": "The 1 GiB `/big` recorded once per run (the recording pass), "
            "replayed with `curl -x` (absolute-form) through `splice-replay`, vs `curl` from "
            "nginx (`direct`, sendfile). In replay mode a 200 can only be a store hit. With "
            "few CPUs, curl shares them with the sender: both rows sit near what curl can "
            "take, so read GB/s as 'keeps up or not' and compare CPU s/GiB. Cells: "
            "`value (xdirect)`.",
            "record-cost": '`splice-record` (`mode = "record"`) vs `splice-fwd` (store off), '
            "same load: wrk keep-alive GET `/small?r=<new>` (a new key per request, so every "
            "one is fetched, written to a blob, fsynced and indexed; one URL would let "
            "single-flight answer concurrent ones from the recording), then one `curl -x` of "
            "`/big` (absolute-form; recording holds the last chunk until the blob is fsynced). "
            "*store entries/req* ~1 shows every request was recorded. Proxy CPU is splice's "
            "own; the kernel's writeback of the blobs is not in it. Cells: "
            "`value (xsplice-fwd)`: the ratio is the cost of recording.",
        }[name]
    if name in ("keepalive", "newconn"):
        return (
            "splice variants (same build, one config key changed) are compared with `splice` "
            "in the *splice variants* section below."
        )
    return ""


def _relabel(key: str, actual: dict[int, int]) -> str:
    for want, got in actual.items():
        if want != got and key.endswith(f"_{got}"):
            return key[: -len(str(got))] + str(want)
    return key


def measure(
    sc: Scenario, t: Target, env: Env, be: Backend, s: Settings, progress: Progress
) -> dict[str, Any]:
    """One scenario on one target; a failure is recorded, never fatal to the run."""
    try:
        if not t.alive():
            t.notes.append(f"{t.name} had died before {sc.name}; restarted")
            t.restart(env, be)
        with t.during(sc.name) as extra:
            figs = sc.fn(Ctx(target=t, env=env, backend=be, s=s))
        figs.update(extra)
        if extra.get("scrape_failures"):
            figs["errors"] = figs.get("errors", 0) + extra["scrape_failures"]
        return figs
    except KeyboardInterrupt:
        raise
    except Exception as e:
        progress.log(f"bench: {sc.name} on {t.name} failed: {e!r}"[:500])
        return {"failed": f"{e!r}"[:500], "trace": traceback.format_exc()[-2000:], "errors": 1}


def write(res: dict[str, Any], out: Path, stamp: str) -> None:
    """JSON (everything), Markdown table, PNG plots; then the latest.* copies."""
    for sc in res["scenarios"].values():
        sc["summary"] = report.summarize(sc["raw"], [m["key"] for m in sc["metrics"]])
    res["checks"] = report.targets_summary(res)
    base = out / stamp
    Path(f"{base}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    try:
        pngs = report.plots(res, base)
    except Exception as e:  # a plotting failure must not lose the numbers
        print(f"bench: plots failed: {e!r}", file=sys.stderr)
        pngs = []
    kinds = tuple(p.stem.rsplit("-", 1)[1] for p in pngs)
    Path(f"{base}.md").write_text(report.markdown(res, stamp, kinds))
    (out / "latest.md").write_text(report.markdown(res, "latest", kinds))
    shutil.copyfile(f"{base}.json", out / "latest.json")
    for old in out.glob("latest-*.png"):  # no stale plot from an earlier, wider run
        old.unlink()
    for p in pngs:
        shutil.copyfile(p, out / p.name.replace(stamp, "latest"))
    print(
        f"bench: wrote {base}.md (+ .json, {len(pngs)} PNGs) and {out}/latest.md", file=sys.stderr
    )


if __name__ == "__main__":
    sys.exit(main())
