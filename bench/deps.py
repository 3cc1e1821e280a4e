"""Install what the suite needs on a fresh machine: peers from apt, matplotlib from pip.

Only what is missing is installed, so a second run never touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.targets import NGINX_STREAM_MODULE

#: command -> Debian package
APT_COMMANDS = {
    "wrk": "wrk",
    "haproxy": "haproxy",
    "nginx": "nginx-light",
    "caddy": "caddy",
    "sniproxy": "sniproxy",
    "tinyproxy": "tinyproxy",
    "curl": "curl",
    "openssl": "openssl",
}
#: files the commands alone do not bring
APT_FILES = {NGINX_STREAM_MODULE: "libnginx-mod-stream"}
#: import name -> pip requirement (into the running interpreter's environment)
PIP_MODULES = {"matplotlib": "matplotlib", "uvloop": "uvloop>=0.19"}
#: without these nothing can be measured at all
ESSENTIAL = ("wrk", "curl", "openssl", "nginx")


def missing_apt() -> list[str]:
    pkgs = [pkg for cmd, pkg in APT_COMMANDS.items() if shutil.which(cmd) is None]
    pkgs += [pkg for path, pkg in APT_FILES.items() if not path.exists()]
    return sorted(set(pkgs))


def missing_pip() -> list[str]:
    return [req for mod, req in PIP_MODULES.items() if importlib.util.find_spec(mod) is None]


def ensure(log: Path | None = None) -> list[str]:
    """Install missing packages; return warnings for what is still missing."""
    warnings: list[str] = []
    pkgs, reqs = missing_apt(), missing_pip()
    if not pkgs and not reqs:
        return warnings
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        if pkgs and os.geteuid() != 0:
            warnings.append(f"not root: cannot apt-get install {' '.join(pkgs)}")
        elif pkgs:
            print(f"bench: apt-get install -y {' '.join(pkgs)}", file=sys.stderr)
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", RUNLEVEL="1")  # no services
            subprocess.run(["apt-get", "update"], stdout=out, stderr=out, env=env, timeout=600)
            subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", *pkgs],
                stdout=out, stderr=out, env=env, timeout=1200, check=False,
            )  # fmt: skip
        if reqs:
            print(f"bench: pip install {' '.join(reqs)}", file=sys.stderr)
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", *reqs],
                stdout=out, stderr=out, timeout=900, check=False,
            )  # fmt: skip
            importlib.invalidate_caches()
    finally:
        if log and not isinstance(out, int):
            out.close()
    still = missing_apt()
    if still:
        warnings.append(f"still missing from apt: {' '.join(still)}")
    if missing_pip():
        warnings.append(f"still missing from pip: {' '.join(missing_pip())}")
    return warnings


def essential_missing() -> list[str]:
    return [c for c in ESSENTIAL if shutil.which(c) is None]
