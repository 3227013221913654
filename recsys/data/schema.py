"""Dataset schemas, read from the ``meta.json`` that the converters write.

The schema is the one contract between data preparation, the loader and the
models: field names (which are also the KJT keys), vocabulary sizes (which are
the embedding table sizes) and the dense feature names.  No heavy imports: the
config loader and the model builders read it without torch's data stack.

Example::

    schema = Schema.load("data/criteo")            # SchemaError: one line naming the file
    schema.vocab_sizes                              # [num_embeddings of each sparse field]
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from recsys.errors import UserError

FORMAT_VERSION = 1
META_FILE = "meta.json"

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


class SchemaError(UserError, ValueError):
    """A meta.json that is missing, unreadable or inconsistent."""


def read_document(
    path: Path,
    parse: Callable[[str], T],
    *,
    error: Callable[[str], UserError],
    missing: str,
    syntax_error: type[E],
    invalid: Callable[[E], str],
) -> T:
    """Reads and parses one text file (meta.json, a TOML config); either failure is one line.

    Why: ``Schema.load`` and ``recsys.config.load_config`` each checked that the file exists,
    read it and turned the parser's error into their own one-line error; this is that one piece.
    ``missing`` follows ``"<path>: "`` when there is no such file; ``invalid(e)`` is the whole
    message for the parser's ``syntax_error``.

    Example::

        raw = read_document(p, tomllib.loads, error=ConfigError, missing="no such config file",
                            syntax_error=tomllib.TOMLDecodeError, invalid=lambda e: f"{p}: invalid TOML ({e})")
    """
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        return parse(path.read_text())
    except syntax_error as e:
        raise error(invalid(e)) from None


@dataclass(frozen=True)
class SparseFeature:
    name: str
    num_embeddings: int


@dataclass(frozen=True)
class Schema:
    """What a model needs to know about a dataset.

    Example::

        schema = Schema.load("data/criteo")          # dir or meta.json path
        schema.sparse_names                           # ["C1", ..., "C26", "I1", ...]
        schema.num_dense                              # 0 with --numeric discretize
    """

    dataset: str
    sparse_features: tuple[SparseFeature, ...]
    dense_features: tuple[str, ...] = ()
    splits: dict[str, int] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.sparse_features:
            raise SchemaError("schema has no sparse features")
        names = [f.name for f in self.sparse_features]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate sparse feature names: {names}")
        for f in self.sparse_features:
            if f.num_embeddings <= 0:
                raise SchemaError(f"sparse feature {f.name!r} has num_embeddings={f.num_embeddings}")

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse_features]

    @property
    def num_sparse(self) -> int:
        return len(self.sparse_features)

    @property
    def num_dense(self) -> int:
        return len(self.dense_features)

    @property
    def vocab_sizes(self) -> list[int]:
        return [f.num_embeddings for f in self.sparse_features]

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "dataset": self.dataset,
            "sparse_features": [
                {"name": f.name, "num_embeddings": f.num_embeddings} for f in self.sparse_features
            ],
            "dense_features": list(self.dense_features),
            "splits": dict(self.splits),
            "preprocessing": dict(self.preprocessing),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], source: str = "<meta>") -> "Schema":
        try:
            version = int(obj["format_version"])
            if version > FORMAT_VERSION:
                raise SchemaError(
                    f"{source}: format_version {version} is newer than this code ({FORMAT_VERSION})"
                )
            return cls(
                dataset=str(obj["dataset"]),
                sparse_features=tuple(
                    SparseFeature(str(f["name"]), int(f["num_embeddings"]))
                    for f in obj["sparse_features"]
                ),
                dense_features=tuple(str(n) for n in obj.get("dense_features", [])),
                splits={str(k): int(v) for k, v in obj.get("splits", {}).items()},
                preprocessing=dict(obj.get("preprocessing", {})),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, SchemaError):
                raise
            raise SchemaError(f"{source}: malformed schema ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: str | Path) -> "Schema":
        """Reads ``meta.json`` from a data directory or the file itself."""
        p = Path(path)
        if p.is_dir():
            p = p / META_FILE
        obj = read_document(
            p, json.loads, error=SchemaError,
            missing="no such file (run a data_prep/*_to_npy.py converter first)",
            syntax_error=json.JSONDecodeError, invalid=lambda e: f"{p}:{e.lineno}: invalid JSON ({e.msg})",
        )
        return cls.from_json(obj, source=str(p))

    def save(self, directory: str | Path) -> Path:
        """Writes ``meta.json`` atomically (temp name, then rename)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        final = d / META_FILE
        tmp.replace(final)
        return final
