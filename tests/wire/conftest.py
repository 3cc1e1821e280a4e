"""The C request-head scanner (``splice/wire/_head_scan.c``) for the tests of both
builds (native_build.py says how the interpreted run gets it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from native_build import load_c

from splice.wire import http_head


@pytest.fixture(scope="session")
def c_scan(tmp_path_factory: pytest.TempPathFactory) -> http_head.Scanner:
    scan: http_head.Scanner = load_c(
        "splice.wire._head_scan", tmp_path_factory.mktemp("head_scan")
    ).scan
    return scan


@pytest.fixture(scope="module", params=["regex", "c"])
def scanner(request: pytest.FixtureRequest, c_scan: http_head.Scanner) -> Iterator[str]:
    """Run a module's tests once with ``parse_head`` on each strict scanner (module
    scope: hypothesis tests may not use a fixture reset per example)."""
    was = http_head.SCAN
    http_head.SCAN = None if request.param == "regex" else c_scan
    try:
        yield request.param
    finally:
        http_head.SCAN = was
