"""The output's staging dir: made beside the output, swapped in whole, recovered after a kill.

Why: until the swap the previous conversion is untouched, whatever happens (bad input
found late, too many bad rows, a full disk, Ctrl-C, ``kill -9``).  The whole conversion is
written to ``<parent>/.<name>.convert-<pid>-<hex>`` (the same filesystem) and swapped in
by one ``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two renames, which a next run
repairs if killed between them).  Files in the output that are not the converter's are
moved into the new conversion, never dropped.  A run holds an ``flock`` on its staging
dir's ``.owner``; the next run deletes the staging dirs whose owner is gone (putting back
any moved files), and refuses to start while another live run converts into the same
output.  (No ``fsync``: this survives a killed process, not a power cut.)

This process's live staging dirs and their lock descriptors are kept in two sets here:
they are facts about the process (a forked worker must close the inherited locks, see
``held_lock_fds``), not about one call.

Example::

    st = open_staging("data/criteo")        # InputError before any work if unusable
    try:
        ...                                  # write into st.dir
        swap_in(st)
    finally:
        close_staging(st, discard=not done)
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: staging dirs are told alive by their pid alone
    fcntl = None  # type: ignore[assignment]  # the module, or None where there is none

from recsys.data.convert.errors import InputError
from recsys.data.convert.saved_vocab import VOCAB_DIR
from recsys.data.convert.splits import SPLITS
from recsys.data.schema import META_FILE
from recsys.errors import one_line

STAGING_INFIX = ".convert-"  # staging dir of output <parent>/<name>: <parent>/.<name>.convert-<pid>-<hex>
OWNER_FILE = ".owner"  # in a staging dir: the owner's pid, flock'ed by it for as long as it runs
PREVIOUS = ".previous"  # two-rename swap: the old conversion, parked inside the new one for a moment
KINDS = ("dense", "sparse", "labels")
# the converter's outputs: replaced by a new conversion (vocab/ with them: a new run brings its own)
OUTPUT_NAMES = frozenset([META_FILE, VOCAB_DIR] + [f"{s}_{k}.npy" for s in SPLITS for k in KINDS])
# the converter's scratch names; in an output dir only leftovers of a killed run (or of older versions)
SCRATCH_NAMES = frozenset([".convert_cache", OWNER_FILE, PREVIOUS] + [f"{n}.tmp" for n in OUTPUT_NAMES
                                                                       if n not in (META_FILE, VOCAB_DIR)])
_ACTIVE_STAGING: set[str] = set()  # staging dirs this process is converting into right now
_LOCK_FDS: set[int] = set()  # their lock descriptors: forked pool workers close their copies


def held_lock_fds() -> tuple[int, ...]:
    """The staging locks this process holds: a forked pool worker closes its copies at start,
    so that orphaned workers of a killed run never keep its staging dir looking alive."""
    return tuple(_LOCK_FDS)


def _owned(name: str) -> bool:
    """Whether an output-dir entry is the converter's (replaced by a new conversion) or the user's
    (kept: moved into the new conversion)."""
    return name in OUTPUT_NAMES or name in SCRATCH_NAMES


@dataclass
class Staging:
    """Where a run writes: ``dir`` beside the output ``out`` (a real path), locked by ``lock_fd``."""

    out: Path
    dir: Path
    lock_fd: int | None


def _staging_pid(d: Path, out: Path) -> int | None:
    m = re.fullmatch(re.escape(f".{out.name}{STAGING_INFIX}") + r"(\d+)-[0-9a-f]+", d.name)
    return int(m.group(1)) if m else None


def _staging_alive(d: Path, pid: int) -> bool:
    """Whether the run that made staging dir ``d`` still runs: its flock on ``.owner`` (survives
    pid reuse), else its pid (before ``.owner`` exists, or while a swap has removed it)."""
    if fcntl is not None:
        try:
            fd = os.open(d / OWNER_FILE, os.O_RDWR)
        except FileNotFoundError:
            fd = -1
        except OSError:
            return True  # cannot tell: leave it alone
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return False
            except OSError:
                return True
            finally:
                os.close(fd)  # releases the lock we may have taken
    if pid == os.getpid():
        return str(d) in _ACTIVE_STAGING
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover(d: Path, out: Path) -> None:
    """Removes the staging dir ``d`` of a dead run, first putting back what belongs to ``out``.

    A run killed between the two renames of the fallback swap left the old conversion at
    ``d/.previous`` and no ``out``: it goes back.  A run killed while moving the user's
    files into ``d`` (just before the swap) left some there: they go back too.  After a
    completed swap ``d`` holds only the old conversion's own files, which are deleted.
    """
    prev = d / PREVIOUS
    if prev.is_dir() and not out.exists():
        for e in list(d.iterdir()):
            if not _owned(e.name) and not (prev / e.name).exists():
                os.rename(e, prev / e.name)
        os.rename(prev, out)
    elif out.is_dir():
        for e in list(d.iterdir()):
            if not _owned(e.name) and not os.path.lexists(out / e.name):
                os.rename(e, out / e.name)
    shutil.rmtree(d, ignore_errors=True)


def open_staging(output: str) -> Staging:
    """Checks the output path, cleans up after killed runs, and makes this run's staging dir.

    Raises ``InputError`` (before any work) for a path that is or lies below a file, a
    mount point (which cannot be swapped), an unwritable parent, or an output another
    live run is converting into.
    """
    if not output:
        raise InputError("--output is empty")
    out = Path(os.path.realpath(output))  # a symlinked output: convert into (and swap) its target
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                if p == out:
                    raise InputError(f"{output}: is a file, not a directory")
                raise InputError(f"{p}: is a file, not a directory (in --output {output})")
            break
    if out.exists() and os.path.ismount(out):
        raise InputError(f"{output}: is a mount point; the converter swaps the whole output directory, "
                         "so give a directory inside it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{e.filename or out.parent}: cannot create ({e.strerror or one_line(e)})") from None
    live = []
    for d in out.parent.glob(f".{glob_escape(out.name)}{STAGING_INFIX}*"):
        pid = _staging_pid(d, out)
        if pid is None or not d.is_dir() or d.is_symlink():
            continue
        if _staging_alive(d, pid):
            live.append((d, pid))
            continue
        try:
            _recover(d, out)
        except OSError:  # cannot repair it now (permissions?): never fatal, the next run tries again
            pass
    if live:
        d, pid = live[0]
        raise InputError(f"{output}: another conversion into it is running (pid {pid}, writing {d}); "
                         "wait for it to finish or stop it")
    if out.is_dir():  # leftovers in the output itself: a killed fallback swap, or older converter versions
        for name in SCRATCH_NAMES:
            q = out / name
            if q.is_dir() and not q.is_symlink():
                shutil.rmtree(q, ignore_errors=True)
            elif q.exists() or q.is_symlink():
                q.unlink(missing_ok=True)
    d = out.parent / f".{out.name}{STAGING_INFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(d)
    except OSError as e:
        raise InputError(f"{out.parent}: cannot create the staging directory {d.name} "
                         f"({e.strerror or one_line(e)}); the converter writes the new conversion beside "
                         f"{output} and swaps it in when complete") from None
    _ACTIVE_STAGING.add(str(d))
    lock_fd = None
    try:
        lock_fd = os.open(d / OWNER_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        _LOCK_FDS.add(lock_fd)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        if fcntl is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
    except OSError as e:
        close_staging(Staging(out, d, lock_fd), discard=True)
        raise InputError(f"{d}: cannot write ({e.strerror or one_line(e)})") from None
    return Staging(out, d, lock_fd)


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped (an output dir may be called ``run[1]``)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps the paths ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where that is not available (other systems, old kernels or C libraries,
    filesystems without it); raises OSError on a real failure."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(st: Staging) -> None:
    """Makes the complete conversion in ``st.dir`` the output, in one rename.

    An existing output dir is exchanged with the staging dir (atomic: a reader sees the
    old or the new conversion, never a mix and never none), then deleted.  Its entries
    that are not the converter's are first moved into the new conversion, and its mode
    bits carried over.  On any failure before the swap, the moved entries go back.
    """
    (st.dir / OWNER_FILE).unlink(missing_ok=True)  # not part of the output; our fd keeps the lock
    if not st.out.is_dir():
        os.rename(st.dir, st.out)
        return
    moved: list[str] = []
    try:
        for e in list(os.scandir(st.out)):
            if not _owned(e.name):
                os.rename(e.path, st.dir / e.name)
                moved.append(e.name)
        os.chmod(st.dir, stat.S_IMODE(os.stat(st.out).st_mode))
        if _exchange(st.dir, st.out):
            old = st.dir
        else:  # two renames; a run killed between them is repaired by the next one (_recover)
            os.rename(st.out, st.dir / PREVIOUS)
            try:
                os.rename(st.dir, st.out)
            except BaseException:
                os.rename(st.dir / PREVIOUS, st.out)
                raise
            old = st.out / PREVIOUS
    except BaseException:
        for name in moved:
            if not os.path.lexists(st.out / name):
                os.rename(st.dir / name, st.out / name)
        raise
    shutil.rmtree(old, ignore_errors=True)


def close_staging(st: Staging, discard: bool) -> None:
    """Releases the staging lock; ``discard`` deletes the staging dir (a failed run)."""
    if discard:
        shutil.rmtree(st.dir, ignore_errors=True)
    _ACTIVE_STAGING.discard(str(st.dir))
    if st.lock_fd is not None:
        _LOCK_FDS.discard(st.lock_fd)
        os.close(st.lock_fd)
        st.lock_fd = None

