"""The saved vocabulary: ``vocab/`` beside ``meta.json``, what maps a raw value to its id.

Why saved: without it no request from real traffic and no new day of logs could be mapped to
the ids a model was trained on (train/serve skew).  ``vocab/`` holds

* ``manifest.json``: format version, the key scheme, dataset, ``--numeric`` mode, the mode
  (``min_count`` or ``hash``), ``--min-count`` / ``--hash N``, and every field's name,
  ``num_embeddings`` and (min-count mode) its own ``min_count`` (Criteo's numeric tokens have
  their own under ``--numeric-min-count`` / ``--preset tts4ctr``; older manifests have none);
* ``vocab.npz`` (min-count mode only): per field ``f`` the sorted uint64 keys ``keys{f}``
  (``formats``' 64-bit value keys, which the C scanner reproduces) and their int32 ids
  ``ids{f}`` (1..V; a key not there is the OOV id 0).  ``--hash N`` needs no table: id = key % N.

``meta.json``'s ``preprocessing.vocab_sha256`` holds the sha256 of each of these files, and
``open_vocab`` checks them, so a damaged or swapped file is one line naming it, never wrong ids.
The files are written into the staging dir with the rest of a conversion and swapped in with it.

Example::

    sums = write_manifest(out / VOCAB_DIR, "criteo", "discretize", "min_count", 10, None, fields)
    saved = open_vocab("data/criteo")           # VocabError: one line naming the file
    saved.check_fits("criteo", "discretize")    # VocabError if another dataset or --numeric mode
    vocab = saved.load()                        # [(sorted uint64 keys, int32 ids)] per field
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.convert.errors import InputError
from recsys.data.convert.vocab import FieldVocab, load_vocab
from recsys.data.schema import META_FILE, Schema, SchemaError

VOCAB_DIR = "vocab"
MANIFEST = "manifest.json"
VOCAB_FILE = "vocab.npz"
VOCAB_FORMAT_VERSION = 1
# how a raw value becomes its 64-bit key (formats.hash_binary, int_keys, EMPTY_KEY; the C scanner
# reproduces them): a new scheme would map every value elsewhere, so a vocabulary names its own
KEY_SCHEME = "fnv-poly64+splitmix64/1"


class VocabError(InputError):
    """A saved vocabulary that is missing, damaged or made for another conversion (exit code 2)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_manifest(
    vocab_dir: Path, dataset: str, numeric: str | None, mode: str, min_count: int | None, hash_size: int | None,
    fields: list[tuple[str, int]], field_min_counts: list[int] | None = None,
) -> dict[str, str]:
    """Writes ``manifest.json`` into ``vocab_dir`` (which holds ``vocab.npz`` in min-count mode);
    returns {file name: sha256} of every vocab file, for ``meta.json``.  ``field_min_counts``:
    each field's min count (min-count mode), in the order of ``fields``."""
    files = [VOCAB_FILE] if mode == "min_count" else []
    per_field: list[int | None] = list(field_min_counts) if field_min_counts is not None else [None] * len(fields)
    manifest = {
        "format_version": VOCAB_FORMAT_VERSION,
        "key_scheme": KEY_SCHEME,
        "dataset": dataset,
        "numeric": numeric,
        "mode": mode,
        "min_count": min_count,
        "hash_size": hash_size,
        "oov_id": 0 if mode == "min_count" else None,
        "fields": [{"name": n, "num_embeddings": s, **({} if c is None else {"min_count": c})}
                   for (n, s), c in zip(fields, per_field)],
        "files": files,
    }
    (vocab_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return {name: sha256_file(vocab_dir / name) for name in [MANIFEST, *files]}


@dataclass(frozen=True)
class SavedVocab:
    """A checked ``vocab/`` of the conversion in ``data_dir`` (checksums and manifest verified)."""

    data_dir: Path
    dataset: str
    numeric: str | None
    mode: str  # "min_count" | "hash"
    min_count: int | None
    hash_size: int | None
    fields: tuple[tuple[str, int], ...]  # (name, num_embeddings) per sparse field, in output order
    field_min_counts: tuple[int, ...] | None = None  # per field, as counted; None: hash mode or an older manifest

    @property
    def dir(self) -> Path:
        return self.data_dir / VOCAB_DIR

    def check_fits(self, dataset: str, numeric: str) -> None:
        """Refuses a vocabulary of another dataset or ``--numeric`` mode, naming the dir."""
        if self.dataset != dataset:
            raise VocabError(f"--vocab-from {self.data_dir}: a {self.dataset} vocabulary, not {dataset}")
        if self.numeric is not None and self.numeric != numeric:
            raise VocabError(f"--vocab-from {self.data_dir}: converted with --numeric {self.numeric}, "
                             f"not {numeric}; give --numeric {self.numeric}")

    def load(self) -> list[FieldVocab]:
        """Per field (sorted uint64 keys, int32 ids in 1..num_embeddings-1); [] in hash mode."""
        if self.mode == "hash":
            return []
        path = self.dir / VOCAB_FILE
        try:
            vocab = load_vocab(str(path))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise VocabError(f"{path}: unreadable vocabulary ({type(e).__name__})") from None
        if len(vocab) != len(self.fields):
            raise VocabError(f"{path}: {len(vocab)} fields, the manifest names {len(self.fields)}")
        for (keys, ids), (name, size) in zip(vocab, self.fields):
            if (keys.dtype != np.uint64 or ids.dtype != np.int32 or keys.shape != ids.shape
                    or (keys.size and (np.any(keys[1:] <= keys[:-1]) or ids.min() < 1 or ids.max() >= size))):
                raise VocabError(f"{path}: field {name}: keys not sorted or ids outside 1..{size - 1}")
        return vocab


def _data_dir(path: str | Path) -> Path:
    """The conversion dir a ``--vocab-from`` names: the dir of ``meta.json``, or its ``vocab/``."""
    p = Path(path)
    if not p.exists():
        raise VocabError(f"{path}: no such directory")
    if not p.is_dir():
        raise VocabError(f"{path}: not a directory (give a converted data dir, with meta.json and vocab/)")
    if not (p / META_FILE).is_file() and p.name == VOCAB_DIR and (p.parent / META_FILE).is_file():
        return p.parent
    if not (p / META_FILE).is_file():
        raise VocabError(f"{path}: no {META_FILE}: not a converted data dir")
    return p


def open_vocab(path: str | Path) -> SavedVocab:
    """Checks the ``vocab/`` of a converted data dir (or that dir itself) against ``meta.json``.

    Every failure is one ``VocabError`` line naming the file: no vocab (a conversion older than
    saved vocabularies), a missing file, a checksum that is not ``meta.json``'s, a manifest of a
    newer format or another key scheme, fields that are not ``meta.json``'s.
    """
    data_dir = _data_dir(path)
    try:
        schema = Schema.load(data_dir)
    except SchemaError as e:
        raise VocabError(str(e)) from None
    sums = schema.preprocessing.get("vocab_sha256")
    vdir = data_dir / VOCAB_DIR
    if not isinstance(sums, dict) or not sums or not vdir.is_dir():
        raise VocabError(f"{data_dir}: no saved vocabulary ({VOCAB_DIR}/ and its checksums in {META_FILE}); "
                         "it was converted before vocabularies were saved: convert it again")
    for name, digest in sorted(sums.items()):
        f = vdir / str(name)
        if not f.is_file():
            raise VocabError(f"{f}: missing; the saved vocabulary is incomplete")
        if sha256_file(f) != digest:
            raise VocabError(f"{f}: checksum does not match {data_dir / META_FILE} "
                             "(damaged or changed since the conversion)")
    m = _read_manifest(vdir / MANIFEST)
    fields = tuple((str(f["name"]), int(f["num_embeddings"])) for f in m["fields"])
    if list(fields) != [(f.name, f.num_embeddings) for f in schema.sparse_features] or m["dataset"] != schema.dataset:
        raise VocabError(f"{vdir / MANIFEST}: its dataset or fields are not those of {data_dir / META_FILE}")
    if m["mode"] == "min_count" and VOCAB_FILE not in sums:
        raise VocabError(f"{vdir / VOCAB_FILE}: not covered by {data_dir / META_FILE}'s checksums")
    per_field = [f.get("min_count") for f in m["fields"]]
    field_min_counts = tuple(int(c) for c in per_field) if per_field and None not in per_field else None
    return SavedVocab(data_dir, str(m["dataset"]), m["numeric"], str(m["mode"]), m["min_count"], m["hash_size"],
                      fields, field_min_counts)


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, its version and key scheme checked; one line for anything wrong."""
    try:
        m = json.loads(path.read_text())
        version, scheme, mode = int(m["format_version"]), m["key_scheme"], m["mode"]
        _ = m["dataset"], m["numeric"], m["min_count"], m["hash_size"], list(m["fields"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VocabError(f"{path}: malformed vocabulary manifest ({type(e).__name__})") from None
    if version > VOCAB_FORMAT_VERSION:
        raise VocabError(f"{path}: vocabulary format_version {version} is newer than this code "
                         f"({VOCAB_FORMAT_VERSION})")
    if scheme != KEY_SCHEME:
        raise VocabError(f"{path}: key scheme {scheme!r} is not this code's {KEY_SCHEME!r}")
    if mode not in ("min_count", "hash") or (mode == "hash" and not isinstance(m["hash_size"], int)):
        raise VocabError(f"{path}: unknown vocabulary mode {mode!r}")
    return dict(m)
