"""MetadataResolver over real files in a temporary instances directory."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from splice.errors import BackendError
from splice.resolve.base import Endpoint
from splice.resolve.metadata import MAX_FILE, MetadataResolver

RUNNING = {
    "name": "web", "status": "running", "created_at": "2026-01-20T10:30:00Z",
    "backend": "firecracker", "cid": 5, "pid": 4242, "ip_address": "172.30.0.3",
    "tap_device": "shed-tap-1", "cpus": 2, "memory_mb": 4096,
    "rootfs_path": "/var/lib/shed/instances/web/rootfs.ext4", "repo": "charliek/web",
}  # fmt: skip


def write(root: Path, shed: str, doc: object | str) -> Path:
    """Write metadata.json (atomically, like shed-server: a new inode each time)."""
    path = root / shed / "metadata.json"
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.replace(tmp, path)
    return path


def resolve(r: MetadataResolver, shed: str = "web") -> Endpoint | None:
    return asyncio.run(r.resolve(shed))


def fails(r: MetadataResolver, code: str, shed: str = "web") -> BackendError:
    with pytest.raises(BackendError) as e:
        resolve(r, shed)
    assert e.value.code == code and e.value.shed == shed
    return e.value


class TestAnswers:
    def test_a_running_instance_is_its_ip(self, tmp_path: Path) -> None:
        write(tmp_path, "web", RUNNING)
        r = MetadataResolver(str(tmp_path))
        assert resolve(r) == Endpoint("web", "172.30.0.3", "running", "metadata")
        assert r.kind == "metadata" and not r.synchronous and r.lookup_now("web") is None

    def test_a_running_instance_without_ip_has_no_address(self, tmp_path: Path) -> None:
        write(tmp_path, "web", {**RUNNING, "ip_address": ""})
        endpoint = resolve(MetadataResolver(str(tmp_path)))
        assert endpoint is not None and endpoint.address is None

    def test_missing_instances_are_not_mine(self, tmp_path: Path) -> None:
        (tmp_path / "empty").mkdir()  # a directory without metadata.json is not an instance
        (tmp_path / "file").write_text("x")
        r = MetadataResolver(str(tmp_path))
        assert [resolve(r, s) for s in ("ghost", "empty", "file")] == [None, None, None]
        assert resolve(MetadataResolver(str(tmp_path / "nowhere"))) is None

    @pytest.mark.parametrize("name", ["..", "../web", "Web", "a/b", ""])
    def test_impossible_names_never_reach_the_filesystem(self, tmp_path: Path, name: str) -> None:
        write(tmp_path / "..", tmp_path.name, RUNNING)  # what "../x" would find
        assert resolve(MetadataResolver(str(tmp_path / "inner")), name) is None

    @pytest.mark.parametrize("status", ["stopped", "starting", "error"])
    def test_a_stopped_instance_says_how_to_start_it(self, tmp_path: Path, status: str) -> None:
        write(tmp_path, "web", {**RUNNING, "status": status})
        e = fails(MetadataResolver(str(tmp_path)), "SHED_NOT_RUNNING")
        assert "`shed start web`" in e.message


class TestChanges:
    def test_reparses_only_when_the_file_changes(self, tmp_path: Path) -> None:
        write(tmp_path, "web", RUNNING)
        r = MetadataResolver(str(tmp_path))
        for _ in range(5):
            resolve(r)
        assert r.reads == 1
        write(tmp_path, "web", {**RUNNING, "ip_address": "172.30.0.4"})
        assert resolve(r) == Endpoint("web", "172.30.0.4", "running", "metadata")
        write(tmp_path, "web", {**RUNNING, "status": "stopped"})
        fails(r, "SHED_NOT_RUNNING")
        fails(r, "SHED_NOT_RUNNING")
        assert r.reads == 3

    def test_notices_an_in_place_rewrite_by_mtime(self, tmp_path: Path) -> None:
        path = write(tmp_path, "web", RUNNING)
        r = MetadataResolver(str(tmp_path))
        resolve(r)
        st = path.stat()
        path.write_text(json.dumps({**RUNNING, "ip_address": "172.30.0.9"}))  # same size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        assert resolve(r) == Endpoint("web", "172.30.0.9", "running", "metadata")

    def test_a_deleted_instance_disappears(self, tmp_path: Path) -> None:
        path = write(tmp_path, "web", RUNNING)
        r = MetadataResolver(str(tmp_path))
        resolve(r)
        path.unlink()
        assert resolve(r) is None


class TestMalformed:
    @pytest.mark.parametrize(
        "content",
        [
            "{not json",
            "",
            "[1, 2]",
            json.dumps({"name": "web"}),
            json.dumps({**RUNNING, "ip_address": "nonsense"}),
            json.dumps({**RUNNING, "ip_address": 17}),
            "[" * 100_000,
            json.dumps({**RUNNING, "pad": "x" * MAX_FILE}),
        ],
    )
    def test_is_unavailable_and_logged_once(
        self, tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = write(tmp_path, "web", content)
        r = MetadataResolver(str(tmp_path))
        with caplog.at_level(logging.WARNING, "splice.resolve"):
            e = fails(r, "RESOLVER_UNAVAILABLE")
            fails(r, "RESOLVER_UNAVAILABLE")
        assert e.status == 503 and str(tmp_path) not in e.message  # paths stay in the log
        assert len(caplog.records) == 1 and str(path) in caplog.records[0].getMessage()

    def test_recovers_once_fixed(self, tmp_path: Path) -> None:
        write(tmp_path, "web", "{")
        r = MetadataResolver(str(tmp_path))
        fails(r, "RESOLVER_UNAVAILABLE")
        write(tmp_path, "web", RUNNING)
        assert resolve(r) is not None

    def test_a_directory_in_place_of_the_file_is_unavailable(self, tmp_path: Path) -> None:
        (tmp_path / "web" / "metadata.json").mkdir(parents=True)
        fails(MetadataResolver(str(tmp_path)), "RESOLVER_UNAVAILABLE")
