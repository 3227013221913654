"""Builds and loads the converter's C kernels (``criteo_kernels.c``) as a shared library.

Why a compiled library built here instead of numba or a packaged extension: numba's
import and cached-kernel load cost ~0.45 s per process, a third of a 1M-row conversion,
and a setuptools extension would tie the project to an install step.  The library is
compiled once per source version with the system C compiler (``$CC``, else ``cc``; about
1 s), named by the source's hash, and loaded by ctypes in ~1 ms.  Without a compiler the
converters fall back to the pyarrow engine (``--engine arrow``), which needs nothing built.

Where it goes: ``$RECSYS_BUILD_DIR`` if set, else ``recsys/data/_build/`` beside the source
(git-ignored), else ``~/.cache/recsys/`` when the package directory is read-only.  The
compile writes a temporary file and renames it, so concurrent first runs are safe.

Example::

    python -m recsys.data.native          # build now (scripts/setup_env.sh does), print the path
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping

from recsys.cli import run_main
from recsys.errors import UserError

SOURCE = Path(__file__).with_name("criteo_kernels.c")
# -O3 without -march=native: the library must run on any x86-64 / aarch64 machine the
# build directory is copied to; no -ffast-math, the keys must match the pyarrow engine's bits
CFLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-Wall"]


class NativeUnavailable(UserError, RuntimeError):
    """No C compiler, or the compile failed: the message says which and how to fix it."""


def _build_dirs(build_dir: str | None) -> list[Path]:
    if build_dir:
        return [Path(build_dir)]
    return [SOURCE.parent / "_build", Path.home() / ".cache" / "recsys"]


def library_name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:12]
    return f"criteo_kernels-{digest}.so"


def compiler(cc: str = "cc") -> str | None:
    """The C compiler's path: ``cc`` (``$CC`` when ``build`` reads the environment), else gcc or clang."""
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("clang")


def build(force: bool = False, environ: Mapping[str, str] = os.environ) -> Path:
    """Path of the built library, compiling it first if this source version has none yet.

    ``environ``: where ``RECSYS_BUILD_DIR`` and ``CC`` are read (the process environment unless
    given): the one place this module looks at environment variables.
    """
    name = library_name()
    dirs = _build_dirs(environ.get("RECSYS_BUILD_DIR"))
    for d in dirs:
        if (d / name).is_file() and not force:
            return d / name
    cc = compiler(environ.get("CC", "cc"))
    if cc is None:
        raise NativeUnavailable("no C compiler found (set $CC or install gcc); use --engine arrow instead")
    errors = []
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=d)
            os.close(fd)
        except OSError as e:  # read-only: try the next place
            errors.append(f"{d}: {e.strerror}")
            continue
        try:
            res = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
            if res.returncode != 0:
                msg = (res.stderr.strip().splitlines() or ["(no output)"])[0]
                raise NativeUnavailable(f"compiling {SOURCE.name} with {cc} failed: {msg}")
            os.replace(tmp, d / name)  # atomic: a concurrent build writes the same bytes
            return d / name
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise NativeUnavailable(f"no writable build directory ({'; '.join(errors)}); set RECSYS_BUILD_DIR")


def load(environ: Mapping[str, str] = os.environ) -> ctypes.CDLL:
    """The kernels library with its argument types declared (ctypes then checks every call);
    ``environ`` as for ``build``."""
    path = build(environ=environ)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:  # e.g. a build directory shared with a machine of another architecture
        raise NativeUnavailable(f"cannot load {path}: {e}; delete it to rebuild") from None
    p, i64, i32, u64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_uint64
    signatures = {
        "rc_count_newlines": (i64, [p, i64]),
        "rc_scan_criteo": (i64, [p, i64, i32, i64, p, p, p, u64, u64, p, p, p, p, p, p, p]),
        "rc_dict_encode": (i32, [p, i64, i64, p, i64, p, p, p, p, p]),
        "rc_mod_ids": (None, [p, i64, i64, p, i64, u64, p]),
        "rc_sum_by_key": (i64, [p, p, i64, p, p]),
        "rc_build_vocab_tables": (None, [p, p, p, i64, p, p, p]),
        "rc_lookup_gather": (i32, [p, i64, i64, p, p, p, p, p, p, i64, p, p, p]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recsys.data.native",
        description="Compile the Criteo converter's C kernels (done on first use anyway) and print the path.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m recsys.data.native\n  CC=clang python -m recsys.data.native --force",
    )
    p.add_argument("--force", action="store_true", help="recompile even if this source version is built")
    args = p.parse_args(argv)

    def run() -> int:
        print(build(force=args.force, environ=os.environ))
        return 0

    return run_main("", run)  # "error: no C compiler found ..." and 2


if __name__ == "__main__":
    sys.exit(main())
