"""``pipx install .`` on a fresh machine gives a working ``splice``: the same steps, by hand.

The sources (pyproject, setup.py, README, the package) are copied to a temporary
directory, a wheel is built there (``pip wheel --no-deps``, isolated: its build
dependencies, mypyc among them, come from PyPI), installed into a fresh venv, and the
installed command is run from outside the work tree: ``--version``, which names the
build, ``check`` on the main example, and the imports that only ``serve`` needs. Twice:
with a C compiler the per-request modules are compiled (mypyc); with a compiler that
fails, the same wheel is built interpreted and says so. Every step has a time limit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from splice import __version__

ROOT = Path(__file__).resolve().parent.parent
#: building and installing fetch from PyPI; generous, but bounded
STEP_TIMEOUT = 600


def step(*argv: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # nothing from the test run's own path (make test's compiled run sets PYTHONPATH)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SPLICE_"))}
    r = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        env=clean | env,
    )
    assert r.returncode == 0, f"{argv} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cc", "build"), [(None, "mypyc"), ("false", "interpreted")], ids=["compiled", "no-compiler"]
)
def test_the_wheel_installs_into_a_fresh_venv_and_runs(
    tmp_path: Path, cc: str | None, build: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "splice", src / "splice", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    pip_wheel = (sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", wheels, src)
    built = step(*pip_wheel, cwd=tmp_path, **({"CC": cc} if cc else {}))
    if cc:  # the fallback is said, not silent
        assert "installing the interpreted modules" in built.stdout + built.stderr
    [wheel] = wheels.glob("shed_splice-*.whl")

    venv = tmp_path / "venv"
    step(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    step(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    splice = venv / "bin" / "splice"
    version = step(splice, "--version", cwd=tmp_path).stdout
    assert version.strip() == f"splice {__version__} ({build})"
    out = step(splice, "check", "-c", ROOT / "examples" / "splice.toml", cwd=tmp_path).stdout
    assert "mini-desktop.shed.example.io" in out
    imports = "import splice.admin, splice.supervisor, splice.service, uvloop, prometheus_client"
    step(venv / "bin" / "python", "-c", imports, cwd=tmp_path)
