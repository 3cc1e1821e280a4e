"""``pipx install .`` on a fresh machine gives a working ``splice``: the same steps, by hand.

The sources (pyproject, README, the package) are copied to a temporary directory, a
wheel is built there (``pip wheel --no-deps``), installed into a fresh venv (its
runtime dependencies come from PyPI), and the installed command is run from outside
the work tree: ``--version``, ``check`` on the main example, and the imports that
only ``serve`` needs. Every step has a time limit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from splice import __version__

ROOT = Path(__file__).resolve().parent.parent
#: building and installing fetch from PyPI; generous, but bounded
STEP_TIMEOUT = 600


def step(*argv: str | Path, cwd: Path) -> str:
    r = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT
    )
    assert r.returncode == 0, f"{argv} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "splice", src / "splice", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    step(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, src, cwd=tmp_path)
    [wheel] = wheels.glob("shed_splice-*.whl")

    venv = tmp_path / "venv"
    step(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    step(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    splice = venv / "bin" / "splice"
    assert step(splice, "--version", cwd=tmp_path).strip() == f"splice {__version__}"
    out = step(splice, "check", "-c", ROOT / "examples" / "splice.toml", cwd=tmp_path)
    assert "mini-desktop.shed.example.io" in out
    imports = "import splice.admin, splice.supervisor, splice.service, uvloop, prometheus_client"
    step(venv / "bin" / "python", "-c", imports, cwd=tmp_path)
