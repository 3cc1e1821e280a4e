"""The C ClientHello scanner (``scan_hello`` of ``_head_scan.c``) against its twin, the
Python walk of ``client_hello``: whatever the scanner takes, the walk returns the same
``Hello``; whatever the walk refuses or waits for, the scanner declines. And it does
take every well-formed one-record hello it is meant for, so the fast path is used.

Hellos come from Python's own TLS client and from a grammar over the fields the walk
checks (session id, suites, compression, extension block, server names, ALPN names),
then get mutated byte by byte and cut at every length; plus random bytes behind a valid
record header, and every ``max_size`` around the record's end.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from hellos import REAL, alpn, built_hello, extension, real_hello, sni
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.errors import ProtocolError
from splice.wire import client_hello
from splice.wire.client_hello import MAX_HELLO, Hello, parse_client_hello

LAWS = settings(max_examples=300, deadline=None)


@pytest.fixture
def python_walk() -> Iterator[None]:
    """``parse_client_hello`` here is the Python walk alone: the twin."""
    was = client_hello.SCAN
    client_hello.SCAN = None
    try:
        yield
    finally:
        client_hello.SCAN = was


def walk(buf: bytes | bytearray | memoryview, max_size: int = MAX_HELLO) -> Hello | str | None:
    try:
        return parse_client_hello(buf, max_size)
    except ProtocolError as e:
        return e.code


def agree(c: ModuleType, buf: bytes, max_size: int = MAX_HELLO) -> Hello | None:
    """The scanner's answer, checked against the walk's: equal when taken, else declined
    (and then the walk gives an error, a wait, or a hello of several records)."""
    got = c.scan_hello(buf, max_size)
    want = walk(buf, max_size)
    if got is None:
        return None
    assert isinstance(want, Hello), (buf, want)
    assert Hello(*got) == want
    return want


_NAME_LABEL = st.text("abcxyzABCXYZ019-_", min_size=1, max_size=8)
_NAMES = st.lists(_NAME_LABEL, min_size=1, max_size=4).map(".".join)
ODD_NAMES = [
    b"", b".", b"a.", b"a..", b".a", b"a..b", b"A-Z.Test.", b"x" * 63, b"x" * 64,
    b"a." * 126 + b"b", b"a." * 126 + b"bc", b"a." * 127, b"a." * 127 + b".",
    b"caf\xc3\xa9.test", b"a b", b"a\x00b", b"a/b",
]  # fmt: skip
PROTOCOLS = [b"h2", b"http/1.1", b"x", b"", b"a b", b"\xff", b"~!", b"\x7f", b"\x21\x7e"]


@st.composite
def extensions(draw: st.DrawFn) -> bytes:
    """An extension block: the two the walk reads (well or badly formed) among others,
    repeated now and then."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["sni", "sni2", "alpn", "other", "odd-sni", "empty"]))
        if kind == "sni":
            parts.append(sni(draw(st.one_of(_NAMES.map(str.encode), st.sampled_from(ODD_NAMES)))))
        elif kind == "sni2":
            parts.append(sni(b"a.test", b"b.test", name_type=draw(st.sampled_from([0, 1]))))
        elif kind == "alpn":
            parts.append(alpn(*draw(st.lists(st.sampled_from(PROTOCOLS), max_size=3))))
        elif kind == "other":
            parts.append(extension(draw(st.integers(1, 0xFFFF)), draw(st.binary(max_size=6))))
        elif kind == "odd-sni":
            parts.append(extension(0, draw(st.binary(max_size=8))))
        else:
            parts.append(extension(draw(st.sampled_from([0, 16])), b""))
    return b"".join(parts)


@st.composite
def hellos(draw: st.DrawFn) -> bytes:
    """Mostly well-formed around the extensions, so that the extensions get walked."""
    odd = draw(st.integers(0, 4)) == 0
    return built_hello(
        draw(st.one_of(st.none(), extensions())),
        session_id=draw(st.sampled_from([b"", bytes(32), bytes(33)] if odd else [b"", b"x"])),
        suites=draw(st.sampled_from([b"\x13\x01", b"", b"\x13"] if odd else [b"\x13\x01"])),
        compression=draw(st.sampled_from([b"", b"\x00\x01"] if odd else [b"\x00"])),
        trailer=draw(st.sampled_from([b"", b"\x00"] if odd else [b""])),
    )


@pytest.mark.usefixtures("python_walk")
class TestTwins:
    def test_it_takes_every_real_hello(self, c_heads: ModuleType) -> None:
        for hello in [*REAL, real_hello("Mixed.Case.Test.", ("h2",))]:
            assert agree(c_heads, hello) is not None

    @LAWS
    @given(hello=hellos())
    def test_it_agrees_on_made_hellos(self, c_heads: ModuleType, hello: bytes) -> None:
        agree(c_heads, hello)

    @pytest.mark.parametrize("name", ODD_NAMES)
    def test_it_agrees_on_each_odd_name(self, c_heads: ModuleType, name: bytes) -> None:
        agree(c_heads, built_hello(sni(name)))
        agree(c_heads, built_hello(sni(name.upper()) + alpn(b"h2")))

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_it_agrees_on_each_odd_protocol(self, c_heads: ModuleType, protocol: bytes) -> None:
        agree(c_heads, built_hello(alpn(protocol)))
        agree(c_heads, built_hello(alpn(b"h2", protocol) + sni(b"a.test")))

    def test_it_takes_the_well_formed_made_ones(self, c_heads: ModuleType) -> None:
        taken = [
            built_hello(b""),
            built_hello(None),
            built_hello(sni(b"web.alice.shed.example") + alpn(b"h2", b"http/1.1")),
            built_hello(sni(b"a." * 126 + b"b") + extension(0xFF01, b"\x00")),
            built_hello(sni(b"x" * 63 + b".")),
            built_hello(sni(b"a.test", name_type=1)),
            built_hello(b"".join(extension(k, b"") for k in range(100, 164))),
        ]
        for hello in taken:
            assert agree(c_heads, hello) is not None, hello

    def test_it_declines_what_the_walk_takes_otherwise(self, c_heads: ModuleType) -> None:
        """Valid, but past what the scanner does: the walk answers."""
        many = built_hello(b"".join(extension(k, b"") for k in range(100, 165)))
        escaped = built_hello(alpn(b"h2", b"a b"))
        whole = REAL[0]
        message = whole[5:]
        two_records = struct.pack("!BHH", 22, 0x0301, 40) + message[:40]
        two_records += struct.pack("!BHH", 22, 0x0301, len(message) - 40) + message[40:]
        for hello in (many, escaped, two_records):
            assert c_heads.scan_hello(hello, MAX_HELLO) is None
            assert isinstance(walk(hello), Hello)

    @pytest.mark.parametrize("which", range(len(REAL)))
    def test_it_agrees_on_every_byte_mutated(self, c_heads: ModuleType, which: int) -> None:
        hello = REAL[which]
        for i in range(len(hello)):
            for value in {0, 1, 0x7F, 0xFF, hello[i] ^ 1, (hello[i] + 1) % 256}:
                mutated = hello[:i] + bytes([value]) + hello[i + 1 :]
                agree(c_heads, mutated)

    def test_it_declines_every_cut(self, c_heads: ModuleType) -> None:
        hello = built_hello(sni(b"a.test") + alpn(b"h2"))
        for n in range(len(hello)):
            assert c_heads.scan_hello(hello[:n], MAX_HELLO) is None
            assert walk(hello[:n]) is None

    def test_max_size_around_the_end(self, c_heads: ModuleType) -> None:
        hello = REAL[0]
        for max_size in [*range(len(hello) - 3, len(hello) + 3), 0, -1, -(2**40)]:
            got = agree(c_heads, hello, max_size)
            assert (got is not None) == (max_size >= len(hello))

    @LAWS
    @given(body=st.binary(max_size=120), version=st.sampled_from([0x0301, 0x0303, 0x0300]))
    def test_it_agrees_on_random_bodies(
        self, c_heads: ModuleType, body: bytes, version: int
    ) -> None:
        message = b"\x01" + len(body).to_bytes(3, "big") + body
        agree(c_heads, struct.pack("!BHH", 22, version, len(message)) + message)

    @LAWS
    @given(data=st.binary(max_size=64))
    def test_it_agrees_on_random_bytes(self, c_heads: ModuleType, data: bytes) -> None:
        agree(c_heads, data)

    def test_any_bytes_like_and_bytes_after(self, c_heads: ModuleType) -> None:
        hello = REAL[1]
        want = c_heads.scan_hello(hello, MAX_HELLO)
        for buf in (bytearray(hello), memoryview(hello), hello + b"\x14\x03\x03\x00\x01\x01"):
            assert c_heads.scan_hello(buf, MAX_HELLO) == want

    def test_bad_arguments(self, c_heads: ModuleType) -> None:
        with pytest.raises(TypeError):
            c_heads.scan_hello(REAL[0])
        with pytest.raises(TypeError):
            c_heads.scan_hello("text", MAX_HELLO)
        with pytest.raises(TypeError):
            c_heads.scan_hello(REAL[0], "16384")
        with pytest.raises(OverflowError):
            c_heads.scan_hello(REAL[0], 2**70)


def test_the_compiled_build_has_the_scanner_in_place() -> None:
    """What the bench measures: the compiled build parses hellos with the C scanner."""
    from splice.build import build

    assert (client_hello.SCAN is not None) == (build() == "mypyc")


def test_the_parser_takes_the_c_scanner_when_the_extension_is_there(
    c_heads: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "splice.wire._head_scan", c_heads)
    assert client_hello._c_scanner() is c_heads.scan_hello
    monkeypatch.setitem(sys.modules, "splice.wire._head_scan", None)  # import fails
    assert client_hello._c_scanner() is None
