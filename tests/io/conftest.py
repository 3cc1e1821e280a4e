"""The C module (``splice/io/_copy.c``) for the tests of both builds.

The compiled build ships it; on the interpreted run it is compiled here from the same
source, with warnings as errors, so both builds test the C code and its Python twin.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest

import splice.io
from splice.io import native


def compile_c_module(tmp: Path) -> ModuleType:
    """The installed C module, else one built from ``_copy.c`` with Python's compiler."""
    if native.NATIVE_COPY is not None:
        from splice.io import _copy

        return _copy
    src = Path(splice.io.__file__).parent / "_copy.c"
    out = tmp / f"_copy{sysconfig.get_config_var('EXT_SUFFIX')}"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    cc = cc if shutil.which(cc) else "cc"
    include = sysconfig.get_paths()["include"]
    cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-I{include}", str(src), "-o"]
    subprocess.run([*cmd, str(out)], check=True, timeout=120)
    spec = importlib.util.spec_from_file_location("_copy", out)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def c_module(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return compile_c_module(tmp_path_factory.mktemp("c_module"))


@pytest.fixture(scope="session")
def c_fast(c_module: ModuleType) -> native.FastPath:
    """The fast path's functions: the build's own, or those of the module built here."""
    if native.FAST is not None:
        return native.FAST
    m = c_module
    return native.FastPath(m.poll, m.tunnel, m.untunnel, m.taken)
