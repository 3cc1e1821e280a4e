"""Store keys and URL normalisation (pure), and the ``[forward.store]`` settings.

Keys must differ for every matched part (query order included) and only for those;
every settings error must name its key.
"""

from __future__ import annotations

from typing import Any

import pytest

from splice.errors import ConfigError, ProtocolError
from splice.store.keys import (
    header_value,
    key_material,
    normalise_url,
    request_key,
    split_absolute,
)
from splice.store.settings import DEFAULT_MATCH, parse_store_section

EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _url(target: bytes) -> str:
    scheme, host, port, rest = split_absolute(target)
    return normalise_url(scheme, host, port, rest)


@pytest.mark.parametrize(
    ("target", "url"),
    [
        (b"http://Example.COM/a?b=1", "http://example.com/a?b=1"),
        (b"HTTP://example.com:80/", "http://example.com/"),
        (b"http://example.com:8080/x", "http://example.com:8080/x"),
        (b"http://example.com", "http://example.com/"),
        (b"http://example.com?q", "http://example.com/?q"),
        (b"https://example.com:443/p", "https://example.com/p"),
        (b"https://example.com:80/p", "https://example.com:80/p"),
        (b"http://[::1]:8080/p", "http://[::1]:8080/p"),
        (b"http://127.1/p", "http://127.0.0.1/p"),
        (b"http://example.com./P%41th?Z=1&a=2", "http://example.com/P%41th?Z=1&a=2"),
    ],
)
def test_url_normalisation(target: bytes, url: str) -> None:
    assert _url(target) == url


@pytest.mark.parametrize("target", [b"/relative", b"ftp://x/", b"http://u@x/", b"http:///"])
def test_not_a_proxyable_url(target: bytes) -> None:
    with pytest.raises(ProtocolError):
        split_absolute(target)


def _key(**kw: Any) -> str:
    args: dict[str, Any] = {"method": "GET", "url": "http://a/", "body_sha256": EMPTY}
    args |= kw
    match = args.pop("match", DEFAULT_MATCH)
    return request_key(match, **args)


def test_key_is_stable_and_hex() -> None:
    assert _key() == _key() and len(_key()) == 64 and int(_key(), 16) >= 0


def test_every_matched_part_changes_the_key() -> None:
    base = _key()
    assert _key(method="POST") != base
    assert _key(url="http://a/?x") != base
    assert _key(body_sha256="0" * 64) != base
    assert _key(url="http://a/?a=1&b=2") != _key(url="http://a/?b=2&a=1")


def test_unmatched_parts_do_not() -> None:
    match = ("method", "url")
    assert _key(match=match, body_sha256="0" * 64) == _key(match=match)
    assert _key(headers=[(b"Accept", b"x")]) == _key()
    assert _key(match=("url",), method="POST") == _key(match=("url",))


def test_named_headers() -> None:
    match = ("method", "url", "header:accept")
    plain = _key(match=match, headers=[(b"ACCEPT", b"text/plain")])
    assert plain == _key(match=match, headers=[(b"accept", b"text/plain"), (b"X", b"y")])
    assert plain != _key(match=match, headers=[(b"Accept", b"text/html")])
    assert _key(match=match) != _key(match=match, headers=[(b"Accept", b"")])


def test_header_values_join_in_order() -> None:
    fields = [(b"A", b"1"), (b"b", b"x"), (b"a", b"2")]
    assert header_value(fields, "a") == "1, 2"
    assert header_value(fields, "c") is None


def test_material_names_what_was_matched() -> None:
    m = key_material(("method", "header:x-a"), method="GET", url="u", body_sha256=EMPTY,
                     headers=[(b"X-A", b"1")])  # fmt: skip
    assert m == {"v": 1, "method": "GET", "header:x-a": "1"}


def test_methods_are_case_sensitive() -> None:
    """RFC 9110 §9.1: an origin may answer ``get`` otherwise than GET (most say 501), so
    a recording of one never replays for the other."""
    assert _key(method="get") != _key(method="GET")


def test_settings_defaults_and_values() -> None:
    s = parse_store_section({"path": "/s", "mode": "record-new", "match": ["url", "header:X-Id"]})
    assert (s.mode, s.path, s.match, s.enabled) == (
        "record-new",
        "/s",
        ("url", "header:x-id"),
        True,
    )
    assert s.replays and s.records and not s.intercept_tls
    assert parse_store_section({}).enabled is False


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"mode": "sometimes", "path": "/s"}, "forward.store.mode"),
        ({"mode": "replay"}, "forward.store.path"),
        ({"path": "/s", "match": []}, "forward.store.match"),
        ({"path": "/s", "match": ["url", "url"]}, "forward.store.match[1]"),
        ({"path": "/s", "match": ["cookie"]}, "forward.store.match[0]"),
        ({"path": "/s", "match": ["header:bad name"]}, "forward.store.match[0]"),
        ({"path": "/s", "intercept_tls": True}, "forward.store.ca"),
        ({"path": "/s", "intercept_tls": "yes"}, "forward.store.intercept_tls"),
        ({"path": "/s", "max_bytes": 0}, "forward.store.max_bytes"),
        ({"path": "/s", "max_bytes": True}, "forward.store.max_bytes"),
        ({"path": "/s", "colour": "red"}, "forward.store.colour"),
        ({"path": ""}, "forward.store.path"),
    ],
)
def test_settings_errors_name_their_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_store_section(section)
    assert e.value.key == key
