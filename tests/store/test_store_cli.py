"""``splice store ...`` and ``splice ca init`` through the parser the CLI wires in.

Stores are filled with ``store_peers.put``; every command runs with ``-c`` a config
whose ``[forward.store]`` names them, in both its table and its ``--json`` form.
"""

from __future__ import annotations

import argparse
import io
import json
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from store_peers import put

from splice.store.store import Store
from splice.store_cli import add_store_commands, run_store_command


def run(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="splice")
    add_store_commands(p.add_subparsers(dest="cmd", required=True))
    return run_store_command(p.parse_args(argv))


def config(tmp_path: Path, name: str = "store") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[forward.store]\npath = "{tmp_path / name}"\nmode = "record"\n'
        f'intercept_tls = true\nca = "{tmp_path / "ca"}"\n'
    )
    return str(path)


@pytest.fixture
def filled(tmp_path: Path) -> str:
    store = Store(tmp_path / "store", 1 << 30)
    put(store, "a", b"apple", "http://fruit.test/apple")
    put(store, "b", b"banana", "http://fruit.test/banana")
    put(store, "c", b"apple", "http://veg.test/not-an-apple")
    store.close()
    return config(tmp_path)


def out_json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def rewrite_tar(src: Path, dst: Path, change: Callable[[str, bytes], bytes]) -> None:
    """Copy archive ``src`` to ``dst`` with each member's bytes passed through ``change``
    (a hand-made archive: tampered, or with odd fields)."""
    with tarfile.open(src) as t, tarfile.open(dst, "w") as o:
        for m in t.getmembers():
            f = t.extractfile(m)
            assert f is not None
            data = change(m.name, f.read())
            m.size = len(data)
            o.addfile(m, io.BytesIO(data))


def test_ls_table_and_json(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("store", "ls", "-c", filled) == 0
    text = capsys.readouterr().out
    assert "KEY" in text and "http://fruit.test/apple" in text and "3 entries" in text
    assert run("store", "ls", "-c", filled, "--json", "--url", "http://fruit.test/*") == 0
    rows = out_json(capsys)
    assert isinstance(rows, list) and [r["url"] for r in rows] == [
        "http://fruit.test/apple", "http://fruit.test/banana"]  # fmt: skip
    assert {"key", "method", "url", "status", "size", "recorded_at"} <= set(rows[0])
    assert rows[0]["size"] == 5 and rows[0]["status"] == 200 and rows[0]["method"] == "GET"


def test_show_takes_a_unique_prefix(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("store", "show", "-c", filled, "b") == 0
    assert "http://fruit.test/banana" in capsys.readouterr().out
    assert run("store", "show", "-c", filled, "--json", "b000") == 0
    doc = out_json(capsys)
    assert isinstance(doc, dict) and doc["headers"] == [["X", "1"]] and doc["reason"] == "OK"
    assert run("store", "show", "-c", filled, "z") == 1
    assert "no entry" in capsys.readouterr().err


def test_rm_by_key_and_by_url(
    filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("store", "rm", "-c", filled, "a") == 0
    assert "removed 1 entry" in capsys.readouterr().out
    store = Store(tmp_path / "store", 1 << 30)
    assert store.blobs.exists(store.entries()[-1].blob)  # "c" still uses the apple blob
    store.close()
    assert run("store", "rm", "-c", filled, "--json", "--url", "*.test/*") == 0
    assert out_json(capsys) == {"removed": 2, "keys": ["b".ljust(64, "0"), "c".ljust(64, "0")]}
    store = Store(tmp_path / "store", 1 << 30)
    assert store.entries() == [] and list(store.blobs.names()) == []
    store.close()


def test_rm_of_an_empty_key_removes_nothing(
    filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``splice store rm "$KEY"`` with KEY unset must not read as "every entry"."""
    assert run("store", "rm", "-c", filled, "") == 1
    assert "empty one matches all" in capsys.readouterr().err
    assert run("store", "show", "-c", filled, "") == 1
    store = Store(tmp_path / "store", 1 << 30)
    assert len(store.entries()) == 3
    store.close()


def test_verify_reports_a_damaged_blob(
    filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("store", "verify", "-c", filled) == 0
    assert "checked 2 blobs: ok" in capsys.readouterr().out
    store = Store(tmp_path / "store", 1 << 30)
    path = store.blobs.path(store.entries()[0].blob)
    store.close()
    path.write_bytes(b"rotten")
    assert run("store", "verify", "-c", filled) == 1
    assert "BAD" in capsys.readouterr().out
    assert run("store", "verify", "-c", filled, "--json") == 1
    doc = out_json(capsys)
    assert isinstance(doc, dict) and doc["ok"] is False and len(doc["bad"]) == 1


def test_export_then_import_elsewhere(
    filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tar = str(tmp_path / "store.tar")
    assert run("store", "export", "-c", filled, tar) == 0
    with tarfile.open(tar) as t:
        assert sorted(m.name for m in t.getmembers())[-1] == "index.json"
        assert len(t.getmembers()) == 3  # two blobs (apple shared) and the index
    other = config(tmp_path, "other")
    (tmp_path / "other").mkdir()
    assert run("store", "import", "-c", other, tar) == 0
    assert "imported 3 entries" in capsys.readouterr().out
    assert run("store", "ls", "-c", other, "--json") == 0
    assert len(out_json(capsys)) == 3  # type: ignore[arg-type]
    assert run("store", "verify", "-c", other) == 0


def test_import_refuses_a_tampered_blob(filled: str, tmp_path: Path) -> None:
    tar = str(tmp_path / "store.tar")
    assert run("store", "export", "-c", filled, tar) == 0
    bad = tmp_path / "bad.tar"
    rewrite_tar(Path(tar), bad, lambda name, b: b.upper() if name.startswith("blobs/") else b)
    other = config(tmp_path, "other")
    (tmp_path / "other").mkdir()
    assert run("store", "import", "-c", other, str(bad)) == 1
    store = Store(tmp_path / "other", 1 << 30)
    assert store.entries() == [] and list(store.blobs.names()) == []
    store.close()


def test_ca_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)
    assert run("ca", "init", "-c", cfg) == 0
    assert "ca.pem" in capsys.readouterr().out
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    assert run("ca", "init", "-c", cfg) == 1
    assert "already holds a CA" in capsys.readouterr().err


def test_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("store", "ls", "-c", config(tmp_path)) == 1
    assert "no store at" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[forward.store]\nmode = "sometimes"\n')
    assert run("store", "ls", "-c", str(bad)) == 1
    assert "forward.store.mode" in capsys.readouterr().err
    assert run("store", "ls", "-c", str(tmp_path / "absent.toml")) == 1


# -- hand-made archives: fields no store writes ---------------------------------------------


def _archive(tmp_path: Path, **bad: Any) -> Path:
    """An exported store of two entries, the second with the fields ``bad``."""
    src = config(tmp_path, "src")
    store = Store(tmp_path / "src", 1 << 30)
    put(store, "a", b"apple", "http://fruit.test/apple")
    put(store, "b", b"banana", "http://fruit.test/banana")
    store.close()
    tar = tmp_path / "good.tar"
    assert run("store", "export", "-c", src, str(tar)) == 0
    out = tmp_path / "crafted.tar"

    def change(name: str, data: bytes) -> bytes:
        if name != "index.json":
            return data
        doc = json.loads(data)
        doc["entries"].sort(key=lambda d: d["key"])
        doc["entries"][1].update(bad)
        return json.dumps(doc).encode()  # NaN and Infinity as Python writes them

    rewrite_tar(tar, out, change)
    return out


@pytest.mark.parametrize(
    "bad",
    [{"recorded_at": 1e20}, {"recorded_at": -5.0}, {"recorded_at": float("nan")},
     {"recorded_at": float("inf")}, {"recorded_at": "yesterday"}, {"recorded_at": True},
     {"status": 99_999}, {"size": -1}, {"method": 7}],
)  # fmt: skip
def test_import_refuses_an_entry_with_a_field_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: dict[str, Any]
) -> None:
    crafted = _archive(tmp_path, **bad)
    dst = config(tmp_path, "dst")
    (tmp_path / "dst").mkdir()
    assert run("store", "import", "-c", dst, str(crafted)) == 1
    out = capsys.readouterr().out
    assert "imported 1 entries" in out and "refused b000000" in out, out
    assert run("store", "ls", "-c", dst) == 0
    assert "1 entries" in capsys.readouterr().out


def test_ls_shows_an_unshowable_time_instead_of_crashing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store written before import checked times (or by hand) may hold one."""
    cfg = config(tmp_path, "old")
    (tmp_path / "old").mkdir()
    store = Store(tmp_path / "old", 1 << 30)
    e = put(store, "a", b"apple", "http://fruit.test/apple")
    store.index.db.execute("UPDATE entries SET recorded_at = 1e20 WHERE key = ?", (e.key,))
    store.close()
    assert run("store", "ls", "-c", cfg) == 0
    assert "1e+20" in capsys.readouterr().out
    assert run("store", "ls", "-c", cfg, "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["recorded_at"] == "1e+20"
