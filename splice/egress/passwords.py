"""Proxy users: scrypt password hashes and ``Proxy-Authorization: Basic`` credentials.

A hash is ``scrypt$N$r$p$SALT$HASH`` (standard base64, padded), made by ``hash_password``
(what ``splice passwd`` prints). ``verify_password`` never raises: a malformed or
out-of-bounds hash is simply False, and the comparison is constant-time. ``authenticate``
spends one scrypt whether or not the user exists, so timing does not reveal user names.
Each check costs ~50 ms of CPU and 16 MiB: callers run it off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import NamedTuple

#: scrypt cost for new hashes: the 2**14/8/1 interactive-login parameters from the paper
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
#: random salt length (bytes); 128 bits makes a precomputed table useless
SALT_BYTES = 16
#: derived key length (bytes)
HASH_BYTES = 32
#: memory a stored hash may make scrypt use (128*N*r bytes): a bad config cannot exhaust RAM
MAX_MEMORY = 64 * 1024 * 1024
#: scrypt$N$r$p$salt$hash with small decimal parameters (bounds checked apart)
_ENCODED = re.compile(
    r"scrypt\$([0-9]{1,8})\$([0-9]{1,2})\$([0-9]{1,2})\$([A-Za-z0-9+/]+=*)\$([A-Za-z0-9+/]+=*)"
)
#: a header longer than this is not a credential anyone typed
MAX_HEADER = 4096
#: CTLs are not allowed in a user-id or password (RFC 7617 section 2)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: verified for unknown users so that they cost the same as known ones; matches nothing
_DUMMY = "scrypt$16384$8$1$" + "A" * 22 + "==$" + "A" * 43 + "="


class _Params(NamedTuple):
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _parse(encoded: str) -> _Params | None:
    m = _ENCODED.fullmatch(encoded)
    if m is None:
        return None
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    try:
        salt, key = _b64(m[4]), _b64(m[5])
    except binascii.Error:
        return None
    power_of_two = n > 1 and n & (n - 1) == 0
    if not power_of_two or r < 1 or not 0 < p <= 16 or 128 * n * r > MAX_MEMORY:
        return None
    if len(salt) < 8 or not 16 <= len(key) <= 64:
        return None
    return _Params(n, r, p, salt, key)


def _scrypt(password: str, n: int, r: int, p: int, salt: bytes, dklen: int) -> bytes:
    secret = password.encode("utf-8", "surrogatepass")  # any str hashes; none raises
    # scrypt needs a little over 128*N*r bytes; MAX_MEMORY bounds that already
    maxmem = MAX_MEMORY + 1024 * 1024
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)


def hash_password(password: str) -> str:
    """A new ``scrypt$...`` hash of ``password`` with a random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, HASH_BYTES)
    salt64, key64 = (base64.b64encode(b).decode("ascii") for b in (salt, key))
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt64}${key64}"


def is_password_hash(encoded: str) -> bool:
    """Whether ``encoded`` is a hash ``verify_password`` can check (for config validation)."""
    return _parse(encoded) is not None


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``; False for a malformed hash."""
    params = _parse(encoded)
    if params is None:
        return False
    n, r, p, salt, key = params
    return hmac.compare_digest(_scrypt(password, n, r, p, salt, len(key)), key)


def parse_basic_auth(header_value: bytes) -> tuple[str, str] | None:
    """``Basic base64(user:password)`` -> (user, password); None if malformed or not Basic."""
    if len(header_value) > MAX_HEADER:
        return None
    scheme, _, token = header_value.strip(b" \t").partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        text = base64.b64decode(token.strip(b" \t"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = text.partition(":")
    if not user or not colon or _CONTROL.search(text):
        return None
    return user, password


def authenticate(users: Mapping[str, str], header_value: bytes | None) -> str | None:
    """The user a ``Proxy-Authorization`` value proves to be, or None."""
    creds = None if header_value is None else parse_basic_auth(header_value)
    if creds is None:
        return None
    user, password = creds
    ok = verify_password(password, users.get(user, _DUMMY))
    return user if ok and user in users else None
