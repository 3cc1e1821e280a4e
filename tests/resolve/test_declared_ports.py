"""DeclaredPorts over real files; time is a hand-moved clock."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from splice.errors import RouteError
from splice.resolve.declared_ports import FAIL_CLOSED, MAX_LABEL, DeclaredPorts
from splice.routing.policy import DeclaredPort, ShedPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def write(root: Path, shed: str, doc: object | str) -> Path:
    path = root / f"{shed}.json"
    tmp = root / f".{shed}.tmp"
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.replace(tmp, path)  # a new inode, as an editor or shed-server would leave it
    return path


class TestReading:
    def test_no_file_declares_nothing(self, tmp_path: Path) -> None:
        assert DeclaredPorts(str(tmp_path)).ports("web") is None
        assert DeclaredPorts(str(tmp_path / "missing")).ports("web") is None

    def test_reads_ports_and_labels_in_order(self, tmp_path: Path) -> None:
        write(tmp_path, "web", [{"port": 3000, "label": "web"}, {"port": 5173}])
        assert DeclaredPorts(str(tmp_path)).ports("web") == (
            DeclaredPort(3000, "web"),
            DeclaredPort(5173, ""),
        )

    def test_an_empty_list_is_valid_and_declares_nothing(self, tmp_path: Path) -> None:
        write(tmp_path, "web", [])
        assert DeclaredPorts(str(tmp_path)).ports("web") == ()

    def test_labels_are_cleaned_for_pages(self, tmp_path: Path) -> None:
        write(tmp_path, "web", [{"port": 1, "label": "a\r\nb" + "x" * 200, "extra": True}])
        (declared,) = DeclaredPorts(str(tmp_path)).ports("web") or ()
        assert declared.label.startswith("ab") and len(declared.label) == MAX_LABEL

    @pytest.mark.parametrize("name", ["..", "../web", "Web", "a/b", ""])
    def test_impossible_names_never_reach_the_filesystem(self, tmp_path: Path, name: str) -> None:
        write(tmp_path, "web", [{"port": 1}])
        inner = tmp_path / "inner"
        inner.mkdir()
        assert DeclaredPorts(str(inner)).ports(name) is None


class TestChanges:
    def test_stats_at_most_once_per_interval_and_rereads_on_change(self, tmp_path: Path) -> None:
        clock = Clock()
        write(tmp_path, "web", [{"port": 3000}])
        declared = DeclaredPorts(str(tmp_path), timer=clock)
        assert declared.ports("web") == (DeclaredPort(3000),)
        write(tmp_path, "web", [{"port": 4000}])
        clock.now += 0.99
        assert declared.ports("web") == (DeclaredPort(3000),)  # not looked at yet
        clock.now += 0.02
        assert declared.ports("web") == (DeclaredPort(4000),)
        clock.now += 5
        assert declared.ports("web") == (DeclaredPort(4000),)
        assert declared.reads == 2  # unchanged file: stat only

    def test_a_new_or_deleted_file_shows_after_the_interval(self, tmp_path: Path) -> None:
        clock = Clock()
        declared = DeclaredPorts(str(tmp_path), timer=clock)
        assert declared.ports("web") is None
        path = write(tmp_path, "web", [{"port": 3000}])
        assert declared.ports("web") is None
        clock.now += 1
        assert declared.ports("web") == (DeclaredPort(3000),)
        path.unlink()
        clock.now += 1
        assert declared.ports("web") is None


class TestMalformed:
    @pytest.mark.parametrize(
        "content",
        [
            "{",
            "",
            '{"port": 3000}',
            "[3000]",
            '[{"port": 0}]',
            '[{"port": 65536}]',
            '[{"port": "3000"}]',
            '[{"port": true}]',
            '[{"port": 3000.0}]',
            '[{"port": 3000, "label": 7}]',
            '[{"label": "web"}]',
            "[" * 100_000,
        ],
    )
    def test_fails_closed_and_logs_once(
        self, tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        clock = Clock()
        path = write(tmp_path, "web", content)
        declared = DeclaredPorts(str(tmp_path), timer=clock)
        with caplog.at_level(logging.WARNING, "splice.resolve"):
            assert declared.ports("web") == FAIL_CLOSED
            clock.now += 2
            assert declared.ports("web") == FAIL_CLOSED
        assert len(caplog.records) == 1 and str(path) in caplog.records[0].getMessage()

    def test_fail_closed_exposes_only_the_default_ports(self) -> None:
        policy = ShedPolicy(default_port=8080, tls_port=8443, ports=FAIL_CLOSED)
        assert policy.pick_port("web", None, 80) == 8080
        assert policy.pick_port("web", 8443, 80) == 8443
        with pytest.raises(RouteError) as e:
            policy.pick_port("web", 3000, 80)
        assert e.value.code == "PORT_NOT_EXPOSED"

    def test_recovers_once_fixed(self, tmp_path: Path) -> None:
        clock = Clock()
        write(tmp_path, "web", "[")
        declared = DeclaredPorts(str(tmp_path), timer=clock)
        assert declared.ports("web") == FAIL_CLOSED
        write(tmp_path, "web", [{"port": 3000}])
        clock.now += 1
        assert declared.ports("web") == (DeclaredPort(3000),)
