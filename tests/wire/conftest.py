"""The C head and ClientHello scanners (``splice/wire/_head_scan.c``) for the tests of
both builds (native_build.py says how the interpreted run gets them)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
from native_build import load_c

from splice.wire import client_hello, http_head, http_response


@pytest.fixture(scope="session")
def c_heads(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return load_c("splice.wire._head_scan", tmp_path_factory.mktemp("head_scan"))


@pytest.fixture(scope="module", params=["regex", "c"])
def scanner(request: pytest.FixtureRequest, c_heads: ModuleType) -> Iterator[str]:
    """Run a module's tests once with the parsers on each strict scanner (module scope:
    hypothesis tests may not use a fixture reset per example)."""
    c = request.param == "c"
    was = http_head.SCAN, http_response.SCAN
    http_head.SCAN = c_heads.scan_request if c else None
    http_response.SCAN = c_heads.scan_response if c else None
    try:
        yield request.param
    finally:
        http_head.SCAN, http_response.SCAN = was


@pytest.fixture(scope="module", params=["python", "c"])
def hello_scanner(request: pytest.FixtureRequest, c_heads: ModuleType) -> Iterator[str]:
    """Run a module's tests once with ``parse_client_hello`` on the Python walk alone and
    once with the C scanner in front of it."""
    was = client_hello.SCAN
    client_hello.SCAN = c_heads.scan_hello if request.param == "c" else None
    try:
        yield request.param
    finally:
        client_hello.SCAN = was
