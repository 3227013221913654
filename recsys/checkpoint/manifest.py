"""A checkpoint's manifest: every file's size (and a sha256 of the small ones), verified on load.

Why: a truncated or missing file (disk full, a copy cut short, a bad sector that shortens a
file) must be named in one line instead of failing deep inside DCP or ``torch.load``.  The DCP
shards, which can be gigabytes, get their size only, so a flipped bit inside a large shard is
not detected (DCP keeps no checksums of its own).

Example::

    write_manifest(Path("checkpoints/demo/group0/.tmp-step-00000120"))   # before the rename
    verify_checkpoint(Path("checkpoints/demo/group0/step-00000120"))     # CheckpointCorrupt if damaged
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from recsys.errors import UserError, one_line

MANIFEST = "manifest.json"
HASHED_MAX_BYTES = 16 << 20  # files up to this size get a sha256 in the manifest; larger ones their size


class CheckpointCorrupt(UserError, RuntimeError):
    """A checkpoint whose files do not match its manifest, or that cannot be read; names the file.

    ``GroupCheckpointer`` sets ``report_here`` (``UserError``) on the group's rank 0, so the
    line is printed once whichever global ranks the group has (``recsys.train.cli``).
    """



def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """Records every file's size (and a sha256 of the small ones) in ``directory/manifest.json``."""
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            size = p.stat().st_size
            entry: dict[str, Any] = {"size": size}
            if size <= HASHED_MAX_BYTES:
                entry["sha256"] = _sha256(p)
            files[p.name] = entry
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1))
    tmp.replace(directory / MANIFEST)


def verify_checkpoint(directory: Path) -> None:
    """Raises ``CheckpointCorrupt`` naming the first file that is missing, short, long or altered.

    A checkpoint written before manifests existed (none there) is checked for a readable
    ``state.json`` only.
    """
    mpath = directory / MANIFEST
    if not mpath.is_file():
        try:
            json.loads((directory / "state.json").read_text())
        except (OSError, ValueError) as e:
            raise CheckpointCorrupt(f"{directory / 'state.json'}: unreadable ({one_line(e)})") from None
        return
    try:
        files = json.loads(mpath.read_text())["files"]
        entries = [(str(name), int(entry["size"]), entry.get("sha256")) for name, entry in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointCorrupt(f"{mpath}: unreadable manifest ({type(e).__name__}: {one_line(e)})") from None
    for name, size_saved, digest in entries:
        p = directory / name
        if not p.is_file():
            raise CheckpointCorrupt(f"{p}: missing (listed in {MANIFEST})")
        size = p.stat().st_size
        if size != size_saved:
            raise CheckpointCorrupt(f"{p}: {size} bytes, {size_saved} when saved (truncated or overwritten)")
        if digest is not None and _sha256(p) != digest:
            raise CheckpointCorrupt(f"{p}: content differs from when it was saved (sha256 mismatch)")
