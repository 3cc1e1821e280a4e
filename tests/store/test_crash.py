"""kill -9 in the middle of recording a 256 MiB body: no entry, no servable half blob.

The gateway runs as its own process (``store_peers.py gateway``). Once a client has
received 64 MiB of the body, the process is killed with SIGKILL. A fresh gateway on
the same store must replay that URL as a clean 504 REPLAY_MISS, ``splice store verify``
must pass, and the killed writer's temp file must be gone after the restart.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from store_peers import WAIT, Gateway, Origin, proxy_get

from splice.store.store import Store
from splice.store_cli import run_store_command

SIZE = 256 << 20
#: the client has seen this much when the gateway is killed: well inside the body
KILL_AT = 64 << 20
TESTS = Path(__file__).resolve().parent.parent


def _start(section: Mapping[str, object]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "store_peers.py"), "gateway", json.dumps(section)],
        stdout=subprocess.PIPE, text=True, cwd=TESTS,
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], WAIT)
    assert ready, "the gateway did not start"
    return proc, int(proc.stdout.readline())


def _read_then_kill(port: int, url: str, proc: subprocess.Popen[str], tmp: Path) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        while got < KILL_AT:
            chunk = s.recv(1 << 20)
            assert chunk, "the gateway closed early"
            got += len(chunk)
        parts = list(tmp.iterdir())
        assert len(parts) == 1 and parts[0].stat().st_size > 0  # a recording in progress
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(WAIT) == -signal.SIGKILL


def test_kill_9_mid_recording(tmp_path: Path) -> None:
    origin = Origin()
    store = tmp_path / "store"
    section = {"path": str(store), "mode": "record"}
    url = f"http://127.0.0.1:{origin.port}/bytes/{SIZE}"
    proc, port = _start(section)
    try:
        _read_then_kill(port, url, proc, store / "tmp")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        assert proc.stdout is not None
        proc.stdout.close()
        origin.stop()
    gw = Gateway({**section, "mode": "replay"})  # the restart: recovery runs here
    try:
        status, fields, body = proxy_get(gw.port, url)
        assert status == 504 and fields["X-Shed-Error"] == "REPLAY_MISS"
        assert b"key " in body and gw.dials == []
    finally:
        gw.close()
    assert list((store / "tmp").iterdir()) == []
    s = Store(store, 1 << 40)
    assert s.entries() == [] and all(s.blobs.path(n).stat().st_size < SIZE for n in s.blobs.names())
    s.close()
    cfg = tmp_path / "splice.toml"
    cfg.write_text(f'[forward.store]\npath = "{store}"\nmode = "replay"\n')
    verify = argparse.Namespace(cmd="store", store_cmd="verify", config=str(cfg), json=True)
    assert run_store_command(verify) == 0
