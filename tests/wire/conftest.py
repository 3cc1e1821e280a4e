"""The C head scanners (``splice/wire/_head_scan.c``) for the tests of both builds
(native_build.py says how the interpreted run gets them)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
from native_build import load_c

from splice.wire import http_head, http_response


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
