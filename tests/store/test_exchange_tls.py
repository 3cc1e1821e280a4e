"""Intercepted HTTPS: curl through the gateway, trusting only the splice CA.

The origin is an HTTPS server with a trustme certificate; the gateway verifies it
against ``trust_bundle`` (that trustme CA) and presents leaves minted by a CA that
``init_ca`` made for the test. Recording and replay go through ``curl -x``; replay runs
with the origin stopped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from store_peers import WAIT, Gateway, Origin, body_sha

from splice.ca import init_ca

pytestmark = pytest.mark.peer


@pytest.fixture
def certs(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    bundle = tmp_path / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return ca, bundle


@pytest.fixture
def tls_origin(certs: tuple[trustme.CA, Path]) -> Iterator[Origin]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs[0].issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    o = Origin(tls=ctx)
    yield o
    o.stop()


@pytest.fixture
def splice_ca(tmp_path: Path) -> Path:
    return init_ca(tmp_path / "ca")


def _gateway(tmp_path: Path, mode: str, bundle: Path | None) -> Gateway:
    section: dict[str, Any] = {"path": str(tmp_path / "store"), "mode": mode}
    section |= {"intercept_tls": True, "ca": str(tmp_path / "ca")}
    return Gateway(section, trust_bundle=None if bundle is None else str(bundle))


def curl(gw: Gateway, ca: Path, url: str, out: Path) -> tuple[int, str]:
    """``curl -x`` through ``gw``: (HTTP status, response head as text); body to ``out``."""
    assert shutil.which("curl"), "curl is needed: apt-get install -y curl"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run(
        ["curl", "-sS", "--max-time", str(WAIT), "-x", f"http://127.0.0.1:{gw.port}",
         "--cacert", str(ca), "-D", "-", "-o", str(out), "-w", "%{http_code}", url],
        capture_output=True, text=True, env=env, timeout=WAIT + 5, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout[-3:]), done.stdout[:-3]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_intercepted_https_records_and_replays_offline(
    tmp_path: Path, certs: tuple[trustme.CA, Path], tls_origin: Origin, splice_ca: Path, host: str
) -> None:
    url = f"https://{host}:{tls_origin.port}/chunked/2000000?x=1"
    out = tmp_path / "body"
    rec = _gateway(tmp_path, "record", certs[1])
    try:
        status, head = curl(rec, splice_ca, url, out)
    finally:
        rec.close()
    assert status == 200 and "x-splice-replay" not in head.lower()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == body_sha(2_000_000)
    tls_origin.stop()
    out.unlink()
    play = _gateway(tmp_path, "replay", None)
    try:
        status, head = curl(play, splice_ca, url, out)
        assert play.dials == []
    finally:
        play.close()
    assert status == 200 and "X-Splice-Replay: hit" in head
    assert "Content-Length: 2000000" in head
    assert hashlib.sha256(out.read_bytes()).hexdigest() == body_sha(2_000_000)


def test_unverifiable_origin_is_502_inside_the_tunnel(
    tmp_path: Path, tls_origin: Origin, splice_ca: Path
) -> None:
    gw = _gateway(tmp_path, "record", None)  # the system store does not know trustme's CA
    try:
        status, head = curl(
            gw, splice_ca, f"https://localhost:{tls_origin.port}/bytes/1", tmp_path / "b"
        )
    finally:
        gw.close()
    assert status == 502 and "X-Shed-Error: CONNECT_FAILED" in head
    assert tls_origin.hits == {}
