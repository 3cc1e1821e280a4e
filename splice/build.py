"""Which build of splice is running: its per-request modules compiled by mypyc, or not.

``setup.py`` compiles them when it can and installs the same modules interpreted when
it cannot, so an install says which it got: ``splice --version`` and the
``splice_build_info`` metric both carry this.
"""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["build"]


def build() -> str:
    """``mypyc`` when the relay is a compiled extension, else ``interpreted``."""
    spec = find_spec("splice.relay")
    origin = spec.origin if spec is not None else None
    return "mypyc" if origin is not None and not origin.endswith(".py") else "interpreted"
