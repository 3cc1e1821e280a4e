"""The egress CA: files and modes, refusals, and leaves a strict TLS client accepts.

Handshakes run in memory (``ssl.MemoryBIO``) against a default-verifying client
context that trusts only the CA ``init_ca`` made.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest

from splice.ca import CaError, CertificateAuthority, init_ca


def _handshake(server: ssl.SSLContext, cafile: Path, name: str) -> None:
    """A full TLS handshake in memory; raises ssl.SSLError if the client refuses."""
    client = ssl.create_default_context(cafile=str(cafile))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for side, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if done == 2:
            return
    raise AssertionError("the handshake did not finish")


def test_init_writes_a_private_key_and_a_certificate(tmp_path: Path) -> None:
    cert = init_ca(tmp_path / "ca")
    key = tmp_path / "ca" / "ca-key.pem"
    assert cert.name == "ca.pem" and b"BEGIN CERTIFICATE" in cert.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700


def test_init_never_overwrites(tmp_path: Path) -> None:
    init_ca(tmp_path)
    before = (tmp_path / "ca-key.pem").read_bytes()
    with pytest.raises(CaError, match="already holds a CA"):
        init_ca(tmp_path)
    assert (tmp_path / "ca-key.pem").read_bytes() == before


def test_load_refuses_a_readable_key_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CaError, match="splice ca init"):
        CertificateAuthority.load(tmp_path)
    init_ca(tmp_path)
    (tmp_path / "ca-key.pem").chmod(0o644)
    with pytest.raises(CaError, match="chmod 600"):
        CertificateAuthority.load(tmp_path)


@pytest.mark.parametrize("host", ["example.com", "127.0.0.1", "::1"])
def test_minted_leaves_verify_against_the_ca(tmp_path: Path, host: str) -> None:
    cert = init_ca(tmp_path)
    ca = CertificateAuthority.load(tmp_path)
    _handshake(ca.server_context(host), cert, host)


def test_a_leaf_is_only_good_for_its_host(tmp_path: Path) -> None:
    cert = init_ca(tmp_path)
    ca = CertificateAuthority.load(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ca.server_context("example.com"), cert, "example.org")


def test_contexts_are_cached_per_host(tmp_path: Path) -> None:
    init_ca(tmp_path)
    ca = CertificateAuthority.load(tmp_path)
    assert ca.server_context("a.test") is ca.server_context("a.test")
    ca.server_context("b.test")
    assert ca.minted == 2
