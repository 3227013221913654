"""Raw rows -> ids with a conversion's saved vocabulary: what serving and offline scoring call.

Why here and not in the server: the rows go through the converter's own pieces -- the lines
are joined into one chunk's bytes and parsed by ``passes.parse_bytes`` (the C scanner or
pyarrow's reader, as the converter would), then mapped by ``passes.split_ids`` (the same hash
or the same vocabulary lookup, C tables included) -- so serving and offline conversion cannot
disagree: a raw test row gets the very ids of the converted test split (tests/test_vocab.py).

A row the converter would drop as malformed is a ``RowError`` here, one line naming the row
(0-based index in the request) and the field, e.g. ``row 3: non-numeric I2 value 'abc'``.

Example::

    enc = RawRowEncoder.from_dir("data/criteo")          # VocabError: one line naming the file
    dense, sparse = enc.encode_lines(["0\\t1\\t5\\t...\\t68fd1e64"])   # float32 [B, Dd], int32 [B, F]
    dense, sparse = enc.encode_json([{"I1": 1, "I2": "", "C1": "68fd1e64", ...}])
    dense_t, kjt = enc.features(dense, sparse)             # what an ensemble member takes
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recsys.data.convert.chunks import Task
from recsys.data.convert.errors import ChunkFault, InputError
from recsys.data.convert.formats import FORMATS, RawFormat
from recsys.data.convert.parse_native import resolve_engine
from recsys.data.convert.passes import Job, parse_bytes, split_ids
from recsys.data.convert.saved_vocab import VOCAB_FILE, SavedVocab, open_vocab
from recsys.data.convert.vocab import VocabCache
from recsys.errors import UserError

if TYPE_CHECKING:
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

_REQUEST = "<request>"  # the file name a request's rows are parsed under


class RowError(UserError, ValueError):
    """A raw row that cannot be encoded; one line naming the row index and the field (HTTP 400)."""

    def __init__(self, row: int | None, message: str) -> None:
        super().__init__(message if row is None else f"row {row}: {message}")
        self.row = row


@dataclass
class RawRowEncoder:
    """Turns raw rows into the ids of the conversion in ``saved.data_dir``; safe to share by threads.

    ``field_names``: the sparse fields (the KJT keys, in column order of ``sparse``);
    ``dense_names``: the dense features (Criteo ``--numeric dense``), else empty.
    """

    saved: SavedVocab
    fmt: RawFormat
    job: Job
    field_names: list[str]
    dense_names: list[str]

    @classmethod
    def from_dir(cls, data_dir: str | Path, engine: str = "auto") -> RawRowEncoder:
        """The encoder of a converted data dir (``meta.json`` + ``vocab/``), its checksums verified.

        ``engine``: "auto" (the C scanner for Criteo where it builds), "native" or "arrow";
        all give the same ids.  Raises ``VocabError`` (a ``UserError``) naming the bad file.
        """
        saved = open_vocab(data_dir)
        fmt = FORMATS[saved.dataset]
        numeric = saved.numeric or "discretize"
        resolved, _ = resolve_engine(engine, fmt.name, log=lambda s: None)
        vocab = None
        if saved.mode == "min_count":
            vocab = VocabCache(str(saved.dir / VOCAB_FILE), saved.load())
        job = Job(fmt.name, numeric, (1.0, 0.0, 0.0), 0, saved.hash_size, "", "", vocab=vocab, engine=resolved)
        sparse, dense = fmt.feature_names(numeric)
        return cls(saved, fmt, job, sparse, dense)

    @property
    def raw_fields(self) -> list[str]:
        """The keys ``encode_json`` takes: the raw columns, label and dropped columns excepted."""
        return [c.name for c in self.fmt.columns if c.kind not in ("label", "drop")]

    def encode_lines(self, lines: Sequence[str | bytes], labeled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Raw lines as in the dataset's files -> (dense float32 [B, Dd], ids int32 [B, F]).

        ``labeled``: the lines hold the label column, as the converter's input does; False for
        lines without it (Criteo's test.txt, Avazu's test.csv: a placeholder label is put in).
        A line may end in ``\\n``.  Raises ``RowError`` for a row the converter would drop.
        """
        label_at = next(i for i, c in enumerate(self.fmt.columns) if c.kind == "label")
        delim = self.fmt.delimiter.encode()
        rows: list[bytes] = []
        for i, line in enumerate(lines):
            b = line.encode("utf-8") if isinstance(line, str) else bytes(line)
            b = b[:-1] if b.endswith(b"\n") else b
            if b"\n" in b:
                raise RowError(i, "holds a newline: send one row per line")
            if not b.strip(b"\r"):
                raise RowError(i, "empty line")
            if not labeled:
                parts = b.split(delim)
                b = delim.join(parts[:label_at] + [b"0"] + parts[label_at:])
            rows.append(b)
        if not rows:
            return (np.zeros((0, len(self.dense_names)), np.float32), np.zeros((0, len(self.field_names)), np.int32))
        return self._encode(b"\n".join(rows) + b"\n", len(rows))

    def encode_json(self, rows: Sequence[Mapping[str, object]]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of raw field values by name (``raw_fields``; e.g. Criteo ``I1``..``I13``, ``C1``..``C26``)
        -> (dense, ids) as ``encode_lines``.  A value is a string, a number or null (empty); a label
        or dropped column may be given and is ignored.  Unknown, missing or mistyped fields,
        and strings holding the delimiter or a newline, are ``RowError``."""
        wanted = set(self.raw_fields)
        ignored = {c.name for c in self.fmt.columns if c.kind in ("label", "drop")}
        sep = self.fmt.delimiter
        lines = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise RowError(i, f"not an object of field values ({type(row).__name__})")
            unknown = [k for k in row if k not in wanted and k not in ignored]
            if unknown:
                names = self.raw_fields
                raise RowError(i, f"unknown field {unknown[0]!r} (the fields are {names[0]}..{names[-1]})")
            texts = []
            for c in self.fmt.columns:
                if c.kind in ("label", "drop"):
                    texts.append("0" if c.kind == "label" else "")
                    continue
                if c.name not in row:
                    raise RowError(i, f"missing field {c.name!r} (null or \"\" for an empty value)")
                texts.append(_value_text(i, c.name, row[c.name], sep))
            lines.append(sep.join(texts))
        return self.encode_lines(lines)

    def _encode(self, data: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
        """One chunk of ``n`` rows through the converter's parse and id mapping; every row must be good."""
        task = Task(0, 0, _REQUEST, 0, len(data), data, split=0, skip_header=False)
        try:
            p = parse_bytes(self.job, data, task)
        except ChunkFault as e:
            raise RowError(e.line - 1, e.what) from None
        except InputError as e:
            raise RowError(None, f"cannot parse the rows: {e}") from None
        if p.bad_count:
            line, why = p.bad_examples[0]
            raise RowError(line - 1, why)
        dense, sparse, _ = split_ids(self.job, p)[0]
        assert sparse.shape[0] == n, (sparse.shape, n)
        return np.ascontiguousarray(dense, np.float32), np.ascontiguousarray(sparse, np.int32)

    def features(self, dense: np.ndarray, sparse: np.ndarray) -> tuple[torch.Tensor, KeyedJaggedTensor]:
        """(dense float32 tensor [B, Dd], KJT keyed by ``field_names``): a member's inputs, built by
        the loader's own ``recsys.data.batch.kjt_from_ids``."""
        import torch  # only a caller with a model needs torch; the encoder itself does not

        from recsys.data.batch import kjt_from_ids

        return torch.from_numpy(dense), kjt_from_ids(torch.from_numpy(sparse), self.field_names)


def _value_text(row: int, name: str, value: object, sep: str) -> str:
    """A JSON field value as the raw text a log line would hold."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(row, f"field {name}: {type(value).__name__} value, want a string, a number or null")
    text = value if isinstance(value, str) else repr(value)
    if sep in text or "\n" in text or "\r" in text:
        raise RowError(row, f"field {name}: value holds {'a tab' if sep == chr(9) else repr(sep)} or a newline")
    return text
