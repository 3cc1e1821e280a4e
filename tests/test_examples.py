"""The files in ``examples/``: configs pass ``splice check``; the unit and Caddyfile parse.

The configs are checked with the real command (a subprocess), as an operator would.
The systemd unit is read as INI for the settings the README promises, and given to
``systemd-analyze verify``; the Caddyfile to ``caddy adapt``.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from splice.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.toml"))


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_the_promised_examples_exist() -> None:
    names = {p.name for p in EXAMPLES.iterdir()}
    assert {
        "splice.toml",
        "splice-vz.toml",
        "splice-tls.toml",
        "splice.service",
        "Caddyfile",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_example_config_passes_splice_check(path: Path) -> None:
    r = run(sys.executable, "-m", "splice", "check", "-c", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"config {path}: ok")


def test_the_examples_show_what_their_names_say() -> None:
    fc = load_config(str(EXAMPLES / "splice.toml"))
    assert fc.dial == "direct" and "shed-api" in fc.resolver.chain and fc.admin is not None
    assert fc.admin.loopback
    vz = load_config(str(EXAMPLES / "splice-vz.toml"))
    assert vz.dial == "connect" and vz.resolver.chain == ("shed-api",)
    tls = load_config(str(EXAMPLES / "splice-tls.toml"))
    passthrough = [lc for lc in tls.listen if lc.mode == "tls-passthrough"]
    assert passthrough and passthrough[0].accept_proxy


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(EXAMPLES / "splice.service")
    return parser


def test_the_systemd_unit_has_the_documented_settings() -> None:
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert service["LimitNOFILE"] == "1048576"
    assert service["User"] == "splice"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["ExecStart"].endswith("splice serve -c /etc/splice/splice.toml")
    assert "AmbientCapabilities" not in service  # only when binding a port below 1024
    assert "#AmbientCapabilities=CAP_NET_BIND_SERVICE" in (EXAMPLES / "splice.service").read_text()
    assert "AF_UNIX" in service["RestrictAddressFamilies"]  # the workers' control channels


@pytest.mark.peer
def test_systemd_accepts_the_unit() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is a test peer (scripts/install_sysdeps.sh)"
    r = run(analyze, "verify", str(EXAMPLES / "splice.service"))
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if line.strip() and "/usr/local/bin/splice" not in line  # not installed here
    ]
    assert not [p for p in problems if "splice.service" in p], problems


@pytest.mark.peer
def test_caddy_adapts_the_caddyfile() -> None:
    caddy = shutil.which("caddy")
    assert caddy is not None, "caddy is a test peer (scripts/install_sysdeps.sh)"
    r = run(caddy, "adapt", "--config", str(EXAMPLES / "Caddyfile"), "--adapter", "caddyfile")
    assert r.returncode == 0, r.stderr
    assert "reverse_proxy" in r.stdout and "*.mini-desktop.shed.example.io" in r.stdout
