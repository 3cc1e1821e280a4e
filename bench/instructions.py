"""User-space instructions splice spends per TLS connection or per keep-alive request.

Time on a shared 2-core box swings by a quarter from one minute to the next; counted
instructions do not. This runs splice (the compiled build, ``make compiled``) under
``valgrind --tool=callgrind`` against the bench's backend, zeroes the counters after
a warm-up, drives a fixed number of operations, dumps the counters, and prints the
whole process's instructions per operation and the splice functions that cost most
(inclusive), for an A/B of two builds (``--build``). Kernel time is not counted: the
syscalls' share is what ``perf stat`` and ``/proc`` are for (bench README, "The
ClientHello in C").

    python -m bench.instructions tls --ops 300
    python -m bench.instructions keepalive --ops 300 --build /tmp/old-build
    python -m bench.instructions keepalive --ops 300 --setting 'frame_responses="fronts"'
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.proc import Managed, free_ports, wait_port
from bench.targets import HOST, REPO, Backend, Env, Splice

#: under valgrind splice starts ~30x slower than natively
_START_TIMEOUT = 120.0
_WARMUP = 40
_NAME = re.compile(r"\((\d+)\)(?: (.*))?")


def _load(kind: str, port: int, ops: int) -> int:
    """``ops`` TLS connections (four workers, which may finish a few more: the count
    made is returned) or keep-alive requests (one connection)."""
    if kind == "tls":
        argv = [sys.executable, "-m", "bench.tls_load", "--port", str(port), "--sni", HOST]
        argv += ["--conns", "4", "--duration", "600", "--warmup", "0", "--max-conns", str(ops)]
        out = subprocess.run(argv, check=True, cwd=REPO, capture_output=True, timeout=900)
        result = json.loads(out.stdout.decode().strip().splitlines()[-1])
        if result["errors"]:
            sys.exit(f"bench.instructions: TLS errors: {result['error_samples']}")
        return int(result["done"])
    url = f"http://127.0.0.1:{port}/small?[1-{ops}]"  # curl's glob: one connection
    argv = ["curl", "-sS", "-f", "-o", "/dev/null", "-H", f"Host: {HOST}", url]
    subprocess.run(argv, check=True, cwd=REPO, timeout=900)
    return ops


def inclusive(path: Path) -> tuple[int, dict[str, int]]:
    """The total, and each function's inclusive count, from a callgrind output file
    (self cost plus what its calls to other functions cost)."""
    names: dict[str, str] = {}
    own: collections.Counter[str] = collections.Counter()
    callees: collections.Counter[str] = collections.Counter()
    fn = cfn = ""
    in_call = False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("fn=", "cfn=")):
            m = _NAME.match(line.split("=", 1)[1])
            name = line.split("=", 1)[1]
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                name = names[m.group(1)]
            if line.startswith("fn="):
                fn, in_call = name, False
            else:
                cfn = name
        elif line.startswith("calls="):
            in_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) < 2:
                continue
            if in_call:
                in_call = False
                if cfn != fn:  # recursion would count twice
                    callees[fn] += int(parts[1])
            else:
                own[fn] += int(parts[1])
    return sum(own.values()), {f: own[f] + callees[f] for f in set(own) | set(callees)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("kind", choices=["tls", "keepalive"])
    ap.add_argument("--ops", type=int, default=300, help="connections or requests counted")
    ap.add_argument("--build", default=str(REPO / "build" / "compiled"), help="PYTHONPATH")
    ap.add_argument("--top", type=int, default=25, help="splice functions listed")
    ap.add_argument("--keep", type=Path, help="copy the callgrind dump here (callgrind_annotate)")
    ap.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                    help='a top-level config line, e.g. frame_responses="all"')  # fmt: skip
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "curl", "nginx", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"bench.instructions: {tool} is not installed")
    with tempfile.TemporaryDirectory(prefix="splice-instr-") as tmp:
        work = Path(tmp)
        env = Env(work=work, nofile=4096, splice_path=a.build)
        be = Backend(env)
        splice: Managed | None = None
        try:
            be.start()
            http, tls = free_ports(2)
            conf = work / "splice.toml"
            preamble = "".join(f"{line}\n" for line in a.setting)  # before the config's tables
            conf.write_text(preamble + Splice()._config(http, tls, env, be))  # the bench's splice
            out = work / "callgrind.out"
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            argv += [sys.executable, "-m", "splice", "serve", "-c", str(conf)]
            splice = Managed("splice", argv, work / "splice.log", env=env.splice_env(), cwd=REPO)
            wait_port(tls if a.kind == "tls" else http, splice, _START_TIMEOUT)
            port = tls if a.kind == "tls" else http
            _load(a.kind, port, _WARMUP)
            subprocess.run(["callgrind_control", "-z", str(splice.pid)], check=True,
                           capture_output=True, timeout=60)  # fmt: skip
            ops = _load(a.kind, port, a.ops)
            subprocess.run(["callgrind_control", "-d", str(splice.pid)], check=True,
                           capture_output=True, timeout=60)  # fmt: skip
            dumps: list[Path] = []
            for _ in range(100):  # the dump is written by the next basic block it runs
                dumps = sorted(work.glob("callgrind.out.*"))
                if dumps:
                    break
                time.sleep(0.1)
            if not dumps:
                sys.exit("bench.instructions: callgrind wrote no dump")
            total, incl = inclusive(dumps[-1])
            if a.keep is not None:
                shutil.copyfile(dumps[-1], a.keep)
        finally:
            if splice is not None:
                splice.stop()
            be.stop()
    unit = "connection" if a.kind == "tls" else "request"
    print(f"{a.kind}: {total / ops:,.0f} user-space instructions per {unit}, {ops} {unit}s")
    top = sorted(((c, f) for f, c in incl.items() if f.startswith("CPyDef_")), reverse=True)
    for count, fn in top[: a.top]:
        print(f"{count / ops:>10,.0f}  {fn.removeprefix('CPyDef_')}")


if __name__ == "__main__":
    main()
