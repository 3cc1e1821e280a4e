from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splice.egress.passwords import (
    SALT_BYTES,
    authenticate,
    hash_password,
    is_password_hash,
    parse_basic_auth,
    verify_password,
)

#: any text UTF-8 can encode
passwords = st.text(st.characters(codec="utf-8"), max_size=20)


def cheap_hash(password: str, salt: bytes = b"s" * 16) -> str:
    """A valid hash with scrypt's cheapest parameters, so tests stay fast."""
    key = hashlib.scrypt(password.encode(), salt=salt, n=2, r=1, p=1, dklen=32)
    return f"scrypt$2$1$1${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def basic(credentials: bytes, scheme: bytes = b"Basic") -> bytes:
    return scheme + b" " + base64.b64encode(credentials)


@pytest.fixture(scope="module")
def real_hash() -> str:
    return hash_password("correct horse")


class TestHashPassword:
    def test_uses_the_documented_format_and_parameters(self, real_hash: str) -> None:
        kind, n, r, p, salt, key = real_hash.split("$")
        assert (kind, n, r, p) == ("scrypt", "16384", "8", "1")
        assert len(base64.b64decode(salt)) == SALT_BYTES
        assert len(base64.b64decode(key)) == 32

    def test_salts_every_hash_differently(self, real_hash: str) -> None:
        assert hash_password("correct horse") != real_hash

    def test_verifies_with_the_same_password_only(self, real_hash: str) -> None:
        assert verify_password("correct horse", real_hash)
        assert not verify_password("correct horse ", real_hash)


class TestVerifyPassword:
    @given(passwords, passwords)
    def test_accepts_exactly_the_hashed_password(self, password: str, other: str) -> None:
        encoded = cheap_hash(password)
        assert verify_password(password, encoded)
        assert verify_password(other, encoded) == (other == password)

    def test_never_raises_for_a_password_with_lone_surrogates(self) -> None:
        assert not verify_password("\ud800", cheap_hash("x"))

    @pytest.mark.parametrize(
        "encoded",
        [
            "",
            "plain",
            "bcrypt$2$1$1$c2FsdHNhbHQ=$" + "A" * 43 + "=",
            "scrypt$3$1$1$c2FsdHNhbHQ=$" + "A" * 43 + "=",  # N not a power of two
            "scrypt$1$1$1$c2FsdHNhbHQ=$" + "A" * 43 + "=",  # N too small
            "scrypt$2$0$1$c2FsdHNhbHQ=$" + "A" * 43 + "=",  # r zero
            "scrypt$2$1$0$c2FsdHNhbHQ=$" + "A" * 43 + "=",  # p zero
            "scrypt$2$1$17$c2FsdHNhbHQ=$" + "A" * 43 + "=",  # p too large
            "scrypt$1048576$8$1$c2FsdHNhbHQ=$" + "A" * 43 + "=",  # 1 GiB of memory
            "scrypt$2$1$1$c2FsdA==$" + "A" * 43 + "=",  # salt too short
            "scrypt$2$1$1$c2FsdHNhbHQ=$AAAA",  # key too short
            "scrypt$2$1$1$c2FsdHNhbHQ=$" + "A" * 100,  # key too long
            "scrypt$2$1$1$c2FsdHNhbHQ$" + "A" * 43 + "=",  # bad padding
            "scrypt$2$1$1$c2FsdHNhbHQ=$" + "A" * 43 + "=$",
        ],
    )
    def test_is_false_for_a_malformed_or_out_of_bounds_hash(self, encoded: str) -> None:
        assert not verify_password("pw", encoded)
        assert not is_password_hash(encoded)


class TestIsPasswordHash:
    def test_accepts_hashes_verify_password_can_check(self, real_hash: str) -> None:
        assert is_password_hash(real_hash)
        assert is_password_hash(cheap_hash("x"))


class TestParseBasicAuth:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (basic(b"alice:pw"), ("alice", "pw")),
            (basic(b"alice:"), ("alice", "")),
            (basic(b"alice:p:w"), ("alice", "p:w")),
            (basic("zoë:pässword".encode()), ("zoë", "pässword")),
            (basic(b"alice:pw", b"bASIC"), ("alice", "pw")),
            (b"  Basic   " + base64.b64encode(b"alice:pw") + b" ", ("alice", "pw")),
        ],
    )
    def test_reads_user_and_password(self, value: bytes, expected: tuple[str, str]) -> None:
        assert parse_basic_auth(value) == expected

    @pytest.mark.parametrize(
        "value",
        [
            b"",
            b"Basic",
            b"Basic ",
            b"Bearer abc",
            basic(b"alice:pw", b"Digest"),
            basic(b"alice"),
            basic(b":pw"),
            basic(b"al\x00ice:pw"),
            basic(b"alice:p\nw"),
            basic(b"alice:\xff"),
            b"Basic YWxpY2U6cHc",  # missing padding
            b"Basic YWxp!2U6cHc=",
            b"Basic " + b"A" * 5000,
        ],
    )
    def test_is_none_for_anything_malformed(self, value: bytes) -> None:
        assert parse_basic_auth(value) is None

    @given(st.binary(max_size=200))
    def test_never_raises(self, value: bytes) -> None:
        result = parse_basic_auth(value)
        assert result is None or (result[0] and ":" not in result[0])


class TestAuthenticate:
    def test_returns_the_user_whose_password_matches(self) -> None:
        users = {"alice": cheap_hash("pw"), "bob": cheap_hash("other")}
        assert authenticate(users, basic(b"alice:pw")) == "alice"
        assert authenticate(users, basic(b"bob:pw")) is None

    def test_refuses_unknown_users_missing_and_malformed_credentials(self) -> None:
        users = {"alice": cheap_hash("pw")}
        assert authenticate(users, basic(b"mallory:pw")) is None
        assert authenticate(users, None) is None
        assert authenticate(users, b"Bearer x") is None
        assert authenticate({}, basic(b"alice:pw")) is None
