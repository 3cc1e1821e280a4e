"""The hand-written C modules (``splice/io/_copy.c``, ``splice/wire/_head_scan.c``) for
the tests of both builds.

The compiled build ships them; on the interpreted run each is compiled here from the
same source, with warnings as errors, so both builds test the C code and its Python
twin.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType

import splice


def load_c(module: str, tmp: Path) -> ModuleType:
    """``module`` (e.g. ``splice.io._copy``) as installed, else built from its ``.c``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    rel = module.split(".")[1:]
    src = Path(splice.__file__).parent.joinpath(*rel[:-1], rel[-1] + ".c")
    out = tmp / f"{rel[-1]}{sysconfig.get_config_var('EXT_SUFFIX')}"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    cc = cc if shutil.which(cc) else "cc"
    include = sysconfig.get_paths()["include"]
    cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-I{include}", str(src), "-o"]
    subprocess.run([*cmd, str(out)], check=True, timeout=120)
    spec = importlib.util.spec_from_file_location(rel[-1], out)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
