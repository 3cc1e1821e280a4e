"""Build splice with its per-request modules compiled to C by mypyc, when it can.

Why: on a machine with cheap kernel TCP the interpreter is most of splice's CPU per
request (bench/README.md, "Compiled with mypyc"). mypyc turns the annotated modules on
the per-connection path into C extensions from the same source, with no second
implementation to keep in step. The wheel keeps every ``.py`` file, and the
extensions shadow the ones compiled, so one switch decides:

- ``SPLICE_COMPILE`` unset: compile, and if that fails (no C compiler, no Python
  headers) say so and install the same code interpreted;
- ``SPLICE_COMPILE=1``: compile or fail the build (``make compiled``, the bench, CI);
- ``SPLICE_COMPILE=0``: interpreted only.

Editable installs (``pip install -e``, ``make setup``) always stay interpreted: an
edit then takes effect without a rebuild, and coverage can see the lines.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: the modules every request or connection runs through: compiled, none of them is
#: left interpreted per request (cProfile of the compiled build lists no frame of
#: theirs). The rest (CLI, control plane, resolvers' I/O, the store) is run rarely.
COMPILED = [
    "splice/accesslog.py",
    "splice/config.py",
    "splice/context.py",
    "splice/metrics.py",
    "splice/server.py",
    "splice/relay.py",
    "splice/http_conn.py",
    "splice/tls_conn.py",
    "splice/forward_conn.py",
    "splice/egress_tls.py",
    "splice/io/deadlines.py",
    "splice/io/dial.py",
    "splice/io/flow.py",
    "splice/io/native.py",
    "splice/io/pipes.py",
    "splice/io/reactor.py",
    "splice/io/unread.py",
    "splice/io/upstream_pool.py",
    "splice/resolve/chain.py",
    "splice/resolve/static.py",
    "splice/routing/names.py",
    "splice/routing/netset.py",
    "splice/routing/policy.py",
    "splice/routing/route.py",
    "splice/wire/client_hello.py",
    "splice/wire/field_lines.py",
    "splice/wire/forwarded.py",
    "splice/wire/http_head.py",
    "splice/wire/http_response.py",
    "splice/wire/proxy_header.py",
]

#: hand-written C, built with the compiled modules: the relay's copy loop, whose cost is
#: in the socket calls themselves, which mypyc still makes through the C-API, and the
#: fast path that runs it for a tunnel's read events (splice/io/_copy.c says why); the
#: strict request-head scanner, one pass instead of two regex passes (_head_scan.c)
NATIVE = [
    Extension("splice.io._copy", ["splice/io/_copy.c"], extra_compile_args=["-O2"]),
    Extension("splice.wire._head_scan", ["splice/wire/_head_scan.c"], extra_compile_args=["-O2"]),
]

MODE = os.environ.get("SPLICE_COMPILE", "")
#: the setup.py commands that build extensions (not: dist_info, sdist, editable_wheel)
BUILDS = {"bdist_wheel", "build", "build_ext", "install"}


def note(msg: str) -> None:
    print(f"splice build: {msg}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Compile the extensions; unless compiling is required, fall back to pure Python.

    All or nothing: mypyc puts the code of every module in one shared library that
    each module's small extension imports, so a partial build would not import.
    """

    def run(self) -> None:
        if getattr(self, "editable_mode", False) or self.inplace:
            note("editable install: interpreted (edits apply without a rebuild)")
            self.extensions = []
            return
        try:
            super().run()
        except Exception as e:  # CCompilerError, DistutilsExecError, OSError, ...
            if MODE == "1":
                raise
            note(f"compiling failed ({e}); installing the interpreted modules")
            for path in self.get_outputs():
                if os.path.exists(path):
                    os.remove(path)
            self.extensions = []

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


def extensions() -> list[Any]:
    if MODE == "0" or not BUILDS.intersection(sys.argv):
        return []  # metadata, sdist, or an editable install: nothing to translate
    try:
        from mypyc.build import mypycify

        return [*mypycify(COMPILED, opt_level="3", debug_level="0"), *NATIVE]
    except (SystemExit, Exception) as e:  # mypyc missing, or mypy found errors (it exits)
        if MODE == "1":
            raise
        note(f"mypyc could not translate the modules ({e!r}); installing them interpreted")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
