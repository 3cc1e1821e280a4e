"""The egress CA: ``splice ca init``, and leaf certificates minted on demand.

With ``[forward.store] intercept_tls = true`` CONNECT tunnels are terminated here so
their requests can be recorded. ``init_ca`` writes ``ca.pem`` (sandboxes trust it) and
``ca-key.pem`` (mode 0600, created exclusively, never overwritten). ``load`` refuses a
key file others can read. ``server_context(host)`` mints a leaf for ``host`` (DNS name
or IP literal in the SAN) signed by the CA, and caches the ready ``SSLContext``. Leaves
share one P-256 key per process and live a few weeks; the cache drops them well before.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import tempfile
from pathlib import Path

from cachetools import TTLCache
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from splice.egress.authority import parse_ip_literal

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
#: a sandbox image bakes the CA in; ten years outlives any image
CA_DAYS = 3650
#: short-lived leaves: a leaked one is useless soon; minting costs about a millisecond
LEAF_DAYS = 30
#: contexts are re-minted after a day, long before their leaf expires
LEAF_TTL = 86400.0
#: hosts whose context is kept; a build talks to tens, not thousands
LEAF_CACHE = 1024
#: an X.509 commonName is at most 64 characters (RFC 5280 ub-common-name)
_CN_MAX = 64
#: notBefore is backdated so a sandbox clock a little behind still accepts the cert
_SKEW = dt.timedelta(hours=1)


class CaError(Exception):
    """The CA directory cannot be used (the message says why and what to do)."""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:_CN_MAX])])


def _write_private(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with open(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # os.open's mode passes through the umask: set it exactly
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def init_ca(directory: str | Path, common_name: str = "splice egress CA") -> Path:
    """Create ``ca.pem`` and ``ca-key.pem`` in ``directory``; the certificate's path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (d / CA_KEY).exists() or (d / CA_CERT).exists():
        raise CaError(f"{d} already holds a CA; move it away first to make a new one")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(d / CA_KEY, pem, 0o600)
    _write_private(d / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return d / CA_CERT


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


class CertificateAuthority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._contexts: TTLCache[str, ssl.SSLContext] = TTLCache(LEAF_CACHE, LEAF_TTL)
        self.minted = 0

    @classmethod
    def load(cls, directory: str | Path) -> CertificateAuthority:
        d = Path(directory)
        try:
            if (d / CA_KEY).stat().st_mode & 0o077:
                raise CaError(f"{d / CA_KEY} is readable by others; chmod 600 it")
            cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), None)
        except FileNotFoundError as e:
            raise CaError(f"{e.filename} is missing; run `splice ca init -c CONFIG`") from None
        except ValueError as e:
            raise CaError(f"{d}: the CA files cannot be read ({e})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{d / CA_KEY}: expected the EC key `splice ca init` makes")
        return cls(cert, key)

    def mint(self, host: str) -> bytes:
        """A PEM leaf certificate for ``host`` (canonical: a name or an IP literal)."""
        ip = parse_ip_literal(host)
        alt: x509.GeneralName = x509.DNSName(host) if ip is None else x509.IPAddress(ip)
        now = dt.datetime.now(dt.UTC)
        public = self._leaf_key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.minted += 1
        return cert.public_bytes(serialization.Encoding.PEM)

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side context presenting a leaf for ``host`` (cached per host)."""
        ctx = self._contexts.get(host)
        if ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_alpn_protocols(["http/1.1"])  # we speak HTTP/1.1 inside the tunnel
            _load_chain(ctx, self.mint(host) + self._leaf_pem)
            self._contexts[host] = ctx
        return ctx


def _load_chain(ctx: ssl.SSLContext, pem: bytes) -> None:
    """``load_cert_chain`` reads only files: a private temp file, removed at once."""
    fd, name = tempfile.mkstemp(prefix="splice-leaf-", suffix=".pem")
    try:
        with open(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(name)
    finally:
        os.unlink(name)
