"""Shared fixtures: upstream VMs on loopback and splice as a real subprocess.

The servers, the raw client and the subprocess wrapper live in ``upstreams.py``;
this file only owns their lifetimes. Factories close everything they made at
teardown; a splice that logged a traceback, or did not exit 0 on SIGTERM, fails
the test that ran it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from upstreams import DOMAIN, BulkServer, EchoApp, SpliceProcess, Upstream

from splice.build import build

MakeApp = Callable[..., EchoApp]


def pytest_report_header() -> str:
    return f"splice build: {build()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """``make test`` runs the suite twice, and says which build each run must import
    (SPLICE_EXPECT_BUILD): a compiled run that quietly imported the sources (or the
    reverse) would pass without testing what it claims to."""
    want = os.environ.get("SPLICE_EXPECT_BUILD")
    if want and want != build():
        raise pytest.UsageError(f"SPLICE_EXPECT_BUILD={want}, but this run imports {build()}")


MakeBulk = Callable[..., BulkServer]
StartSplice = Callable[..., SpliceProcess]


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    """``make_app(name, host="127.0.0.1")``: a started ``EchoApp``."""
    made: list[Upstream] = []

    def make(name: str, host: str = "127.0.0.1") -> EchoApp:
        app = EchoApp(name, host)
        made.append(app)
        return app

    yield make
    for up in made:
        up.close()


@pytest.fixture
def make_bulk() -> Iterator[MakeBulk]:
    """``make_bulk(name, host="127.0.0.1")``: a started ``BulkServer``."""
    made: list[Upstream] = []

    def make(name: str, host: str = "127.0.0.1") -> BulkServer:
        up = BulkServer(name, host)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


@pytest.fixture
def start_splice(tmp_path: Path) -> Iterator[StartSplice]:
    """``start_splice(sheds, **settings)``: splice serving ``*.test`` on 127.0.0.1:<any>.

    ``settings`` are top-level config keys (``head_timeout``, ``max_head``...).
    """
    running: list[SpliceProcess] = []

    def start(sheds: dict[str, Any], **settings: Any) -> SpliceProcess:
        cfg: dict[str, Any] = {
            "domains": [DOMAIN],
            "listen": [{"address": "127.0.0.1:0", "mode": "http"}],
            **settings,
            "sheds": sheds,
        }
        proc = SpliceProcess(cfg, tmp_path)
        running.append(proc)
        return proc

    yield start
    for proc in running:
        status = proc.stop()
        assert not proc.problems(), proc.stderr
        assert status == 0, f"splice exited with {status}:\n{proc.stderr}"
