"""Record and replay through the transparent egress listeners of a real ``splice serve``.

``egress-http`` takes plain requests whose Host field names the origin; ``egress-tls``
takes TLS whose SNI names it and, with ``intercept_tls``, is terminated with the splice
CA so the requests inside can be recorded. Nothing is REDIRECTed here (the namespace
test does that), so egress-http takes the port from the Host field and egress-tls
dials 443: the HTTPS origin listens on 127.0.0.9:443 (root, as in CI). Each test
records, stops the origin, and replays from a fresh splice on the same store.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from store_peers import Origin, body_sha

from splice.ca import init_ca

pytestmark = pytest.mark.peer

TLS_ORIGIN = "127.0.0.9"
WAIT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Splice:
    """``splice serve`` with one egress listener and the store in ``mode``."""

    def __init__(
        self, tmp: Path, listen: str, mode: str, ports: list[int], *, forward: str = "",
        store: str = "",
    ) -> None:  # fmt: skip
        self.port = free_port()
        cfg = tmp / f"{listen}-{mode}.toml"
        cfg.write_text(
            "workers = 1\n"
            f'[[listen]]\naddress = "127.0.0.1:{self.port}"\nmode = "{listen}"\n'
            f'[forward]\nports = {ports}\nhosts = {{ "origin.test" = "{TLS_ORIGIN}" }}\n'
            f"{forward}"
            f'[forward.store]\npath = "{tmp / "store"}"\nmode = "{mode}"\n{store}'
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "splice", "serve", "-c", str(cfg)], stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.stop()
                time.sleep(0.05)
        raise AssertionError(f"splice did not start: {self.stop()}")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()
        return err


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("curl"), "curl is needed: apt-get install -y curl"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(WAIT), "-D", "-", "-w", "%{http_code}", *args],
        capture_output=True, text=True, env=env, timeout=WAIT + 5, check=False,
    )  # fmt: skip


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def http_origin() -> Iterator[Origin]:
    o = Origin(address=(TLS_ORIGIN, 0))
    yield o
    o.stop()  # again, if a test failed before it stopped it


def test_egress_http_records_then_replays_offline(tmp_path: Path, http_origin: Origin) -> None:
    origin = http_origin
    host = f"origin.test:{origin.port}"
    url = f"http://127.0.0.1:{{port}}/bytes/{100_000}"
    out = tmp_path / "body"
    rec = Splice(tmp_path, "egress-http", "record", [origin.port])
    try:
        r = curl("-H", f"Host: {host}", "-o", str(out), url.format(port=rec.port))
    finally:
        log = rec.stop()
    assert r.stdout.endswith("200"), r.stderr
    line = f"store 127.0.0.1 host=origin.test port={origin.port} mode=egress-http user=- key="
    assert f"{line}" in log and log.count(" RECORDED\n") == 1, log
    assert "X-Splice-Replay" not in r.stdout and sha(out) == body_sha(100_000)
    origin.stop()
    play = Splice(tmp_path, "egress-http", "replay", [origin.port])
    try:
        hit = curl("-H", f"Host: {host}", "-o", str(out), url.format(port=play.port))
        miss = curl("-H", f"Host: {host}", "-o", os.devnull,
                    f"http://127.0.0.1:{play.port}/bytes/7")  # fmt: skip
    finally:
        log = play.stop()
    assert hit.stdout.endswith("200") and "X-Splice-Replay: hit" in hit.stdout, hit
    assert sha(out) == body_sha(100_000)
    assert miss.stdout.endswith("504") and "X-Shed-Error: REPLAY_MISS" in miss.stdout, miss
    assert log.count(" HIT\n") == 1 and log.count(" REPLAY_MISS\n") == 1, log


@pytest.fixture
def tls_origin(tmp_path: Path) -> Iterator[tuple[Origin, Path]]:
    """An HTTPS origin for origin.test on 127.0.0.9:443; the bundle that verifies it."""
    if os.geteuid() != 0:
        pytest.fail("egress-tls dials port 443 here: run as root (CI does)")
    ca = trustme.CA()
    bundle = tmp_path / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("origin.test").configure_cert(ctx)
    o = Origin(tls=ctx, address=(TLS_ORIGIN, 443))
    yield o, bundle
    o.stop()


def test_intercepted_egress_tls_records_then_replays_offline(
    tmp_path: Path, tls_origin: tuple[Origin, Path]
) -> None:
    origin, bundle = tls_origin
    splice_ca = init_ca(tmp_path / "ca")
    keys = {
        "forward": f'trust_bundle = "{bundle}"\n',
        "store": f'intercept_tls = true\nca = "{tmp_path / "ca"}"\n',
    }
    out = tmp_path / "body"

    def get(s: Splice, path: str, to: Path) -> subprocess.CompletedProcess[str]:
        return curl("--cacert", str(splice_ca), "--resolve", f"origin.test:{s.port}:127.0.0.1",
                    "-o", str(to), f"https://origin.test:{s.port}{path}")  # fmt: skip

    rec = Splice(tmp_path, "egress-tls", "record", [443], **keys)
    try:
        r = get(rec, "/chunked/300000", out)
    finally:
        log = rec.stop()
    assert r.stdout.endswith("200"), (r.stderr, log)
    assert sha(out) == body_sha(300_000) and origin.hits["/chunked/300000"] == 1
    origin.stop()
    play = Splice(tmp_path, "egress-tls", "replay", [443], **keys)
    try:
        hit = get(play, "/chunked/300000", out)
        miss = get(play, "/bytes/5", tmp_path / "miss")
    finally:
        play.stop()
    assert hit.stdout.endswith("200") and "X-Splice-Replay: hit" in hit.stdout, hit
    assert sha(out) == body_sha(300_000)
    assert miss.stdout.endswith("504") and "X-Shed-Error: REPLAY_MISS" in miss.stdout, miss


def test_egress_tls_in_replay_without_interception_is_refused_never_dialled(
    tmp_path: Path, tls_origin: tuple[Origin, Path]
) -> None:
    origin, _ = tls_origin
    play = Splice(tmp_path, "egress-tls", "replay", [443])
    try:
        r = curl("-k", "--resolve", f"origin.test:{play.port}:127.0.0.1", "-o", os.devnull,
                 f"https://origin.test:{play.port}/bytes/5")  # fmt: skip
    finally:
        play.stop()
    assert r.returncode == 35 and "access denied" in r.stderr.lower(), r
    assert sum(origin.hits.values()) == 0 and not origin.conns
