"""The C module (``splice/io/_copy.c``) for the tests of both builds (native_build.py
says how the interpreted run gets it)."""

from __future__ import annotations

from types import ModuleType

import pytest
from native_build import load_c

from splice.io import native


@pytest.fixture(scope="session")
def c_module(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return load_c("splice.io._copy", tmp_path_factory.mktemp("c_module"))


@pytest.fixture(scope="session")
def c_fast(c_module: ModuleType) -> native.FastPath:
    """The fast path's functions: the build's own, or those of the module built here."""
    if native.FAST is not None:
        return native.FAST
    m = c_module
    return native.FastPath(m.poll, m.tunnel, m.untunnel, m.taken)
