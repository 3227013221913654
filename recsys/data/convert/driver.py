"""The conversion driver: flags checked, inputs checked, passes run on the pool, outputs swapped in.

Why one driver for every dataset and engine: the passes only differ in their per-chunk
function (``passes``), so the ordering, the bad-row log, the staging dir and ``meta.json``
are written once.  See the package docstring (``recsys.data.convert``) for the design.

Example::

    from recsys.data.convert import ConvertConfig, convert
    schema = convert(ConvertConfig(dataset="criteo", inputs=["day_0.gz"], output="data/criteo"))
    schema.splits   # {"train": 800123, "val": 99940, "test": 99937}
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from recsys.data.convert.badrows import BadRowLog
from recsys.data.convert.chunks import Task, check_inputs, is_gz, make_tasks
from recsys.data.convert.errors import ChunkFault, InputError
from recsys.data.convert.formats import FORMATS, RawFormat
from recsys.data.convert.parse_native import resolve_engine
from recsys.data.convert.passes import Job, run_count_chunk, run_hash_chunk, run_map_chunk
from recsys.data.convert.pool import make_pool, ordered_map
from recsys.data.convert.presets import apply_preset
from recsys.data.convert.saved_vocab import VOCAB_DIR, VOCAB_FILE, SavedVocab, open_vocab, write_manifest
from recsys.data.convert.splits import SPLITS, resolve_files
from recsys.data.convert.staging import Staging, close_staging, held_lock_fds, open_staging, swap_in
from recsys.data.convert.vocab import TrainCounts, VocabCache, build_vocab, save_vocab
from recsys.data.convert.writer import SplitWriter, writing
from recsys.data.schema import META_FILE, Schema, SparseFeature
from recsys.errors import one_line

MAX_HASH = 2**31  # ids are int32: --hash N gives ids 0..N-1


@dataclass
class ConvertConfig:
    """One conversion, as the CLI flags give it (``check_config`` refuses bad values)."""

    dataset: str
    output: str
    inputs: list[str] = field(default_factory=list)  # random split over these
    split_files: dict[str, list[str]] = field(default_factory=dict)  # or explicit {split: files}
    split: tuple[float, ...] = (0.8, 0.1, 0.1)  # train, val, test
    seed: int = 0
    min_count: int | None = None  # None -> the dataset's default
    hash_size: int | None = None  # set -> --hash mode
    numeric: str = "discretize"  # Criteo only: "discretize" | "dense"
    workers: int = 1
    max_bad_fraction: float = 0.001
    chunk_mb: float = 16.0
    progress: bool = True
    engine: str = "auto"  # "auto" (compiled scanner where there is one) | "native" | "arrow"
    vocab_from: str | None = None  # a converted data dir: map with its saved vocabulary, count nothing
    numeric_min_count: int | None = None  # Criteo discretize: min count of the numeric tokens; None -> min_count
    preset: str = ""  # "tts4ctr": the official preprocessing where a flag is left unset (``presets``)
    # forked pool workers (pyarrow engine) tune their own glibc malloc (pool.keep_freed_memory);
    # the calling process is never changed (the CLI tunes its own, being the converter's alone)
    tune_worker_malloc: bool = True


def check_config(cfg: ConvertConfig) -> tuple[RawFormat, int, tuple[float, float, float]]:
    """Refuses every bad flag with one line, before any file is read or written.

    Returns (format, min_count, split fractions); ``cfg`` is taken after ``presets.apply_preset``.  Why all here and not in argparse:
    ``convert`` is also called as a library, and a flag that only fails mid-run (a
    negative ``--seed`` in numpy's RNG) or silently misbehaves (``--workers 0``,
    ``--max-bad-fraction -1`` shown as "-100%", ``--hash 3000000000`` overflowing int32
    ids) must be refused the same way from both.
    """
    if cfg.dataset not in FORMATS:
        raise InputError(f"unknown dataset {cfg.dataset!r}; choose from {', '.join(FORMATS)}")
    fmt = FORMATS[cfg.dataset]
    if cfg.numeric not in ("discretize", "dense"):
        raise InputError(f"--numeric must be discretize or dense, got {cfg.numeric!r}")
    if cfg.numeric == "dense" and not any(c.kind == "num" for c in fmt.columns):
        raise InputError(f"--numeric dense: {fmt.name} has no numeric features")
    if cfg.hash_size is not None and cfg.min_count is not None:
        raise InputError("give --min-count or --hash, not both")
    if cfg.vocab_from is not None and (cfg.hash_size is not None or cfg.min_count is not None):
        raise InputError("give --vocab-from or --min-count/--hash, not both (the saved vocabulary has its own)")
    if cfg.hash_size is not None and not 1 <= cfg.hash_size <= MAX_HASH:
        raise InputError(f"--hash must be in 1..{MAX_HASH} (ids are int32), got {cfg.hash_size}")
    for flag, n in (("--min-count", cfg.min_count), ("--numeric-min-count", cfg.numeric_min_count)):
        if n is not None and n < 1:
            raise InputError(f"{flag} must be >= 1 (values seen fewer times in train get the OOV id 0), got {n}")
    if cfg.numeric_min_count is not None:
        if cfg.hash_size is not None or cfg.vocab_from is not None:
            raise InputError("--numeric-min-count counts the vocabulary: not with --hash or --vocab-from")
        if not any(c.kind == "num" for c in fmt.columns) or cfg.numeric != "discretize":
            raise InputError(f"--numeric-min-count: {fmt.name} has no numeric tokens"
                             + (" with --numeric dense" if cfg.numeric == "dense" else ""))
    if cfg.workers < 1:
        raise InputError(f"--workers must be >= 1, got {cfg.workers}")
    if not (math.isfinite(cfg.chunk_mb) and cfg.chunk_mb > 0):
        raise InputError(f"--chunk-mb must be a positive number of megabytes, got {cfg.chunk_mb}")
    if not 0.0 <= cfg.max_bad_fraction <= 1.0:  # NaN fails too
        raise InputError(f"--max-bad-fraction must be a fraction in [0, 1], got {cfg.max_bad_fraction}")
    if cfg.seed < 0:
        raise InputError(f"--seed must be >= 0, got {cfg.seed}")
    fracs = tuple(float(x) for x in cfg.split)
    if len(fracs) != 3 or not all(math.isfinite(x) and x >= 0 for x in fracs) or abs(sum(fracs) - 1.0) > 1e-6:
        raise InputError(f"--split must be three non-negative fractions summing to 1, got {cfg.split}")
    if cfg.hash_size is None and cfg.vocab_from is None and (not cfg.split_files and fracs[0] == 0 or cfg.split_files and
                                  not cfg.split_files.get("train")):
        raise InputError("no train rows to count the vocabularies on (give train a share of --split or "
                         "--train files, or use --hash N)")
    if cfg.split_files and (set(cfg.split_files) - set(SPLITS)):
        raise InputError(f"unknown splits {sorted(set(cfg.split_files) - set(SPLITS))}; use {', '.join(SPLITS)}")
    min_count = fmt.default_min_count if cfg.min_count is None else cfg.min_count
    return fmt, min_count, (fracs[0], fracs[1], fracs[2])


def _os_error_line(e: OSError, st: Staging, output: str) -> str:
    """One line for an OSError of a run: a write into the staging dir is reported against the
    output (it is what the user named) and says the output was kept; a read names its file."""
    what = e.strerror or one_line(e)
    name = str(e.filename) if e.filename is not None else None
    if name is None:
        return f"{output}: {what}; {output} left as it was"
    if name.startswith(str(st.dir)):
        rel = os.path.relpath(name, st.dir)
        return f"{output}: cannot write {rel}: {what}; {output} left as it was"
    return f"{name}: {what}"


def convert(cfg: ConvertConfig, log: Callable[[str], None] = print) -> Schema:
    """Runs the whole conversion; returns the written schema.  Raises InputError on bad input.

    Flags, inputs and the output path are checked before any work; the conversion is
    written to a staging dir and swapped in only when complete (``staging``), so
    the previous output is left as it was by every failure.
    """
    cfg = apply_preset(cfg)
    fmt, min_count, fracs = check_config(cfg)
    saved = None
    if cfg.vocab_from is not None:  # checked (checksums too) before any input is read or output written
        saved = open_vocab(cfg.vocab_from)
        saved.check_fits(fmt.name, cfg.numeric)
        cfg = replace(cfg, hash_size=saved.hash_size)
        min_count = saved.min_count or min_count
    counts = field_min_counts(fmt, cfg.numeric, min_count, cfg.numeric_min_count)
    if saved is not None and saved.field_min_counts is not None:
        counts = list(saved.field_min_counts)
    files, file_splits = resolve_files(cfg.split_files, cfg.inputs)
    check_inputs(fmt, files)
    st = open_staging(cfg.output)
    ok = False
    try:
        schema, rows, elapsed = _convert_into(st.dir, cfg, fmt, files, file_splits, min_count, counts, fracs,
                                              log, saved)
        swap_in(st)
        ok = True
    except OSError as e:
        raise InputError(_os_error_line(e, st, cfg.output)) from None
    finally:
        close_staging(st, discard=not ok)
    log(f"{fmt.name}: {sum(rows.values())} rows -> {cfg.output} ({', '.join(f'{s}={n}' for s, n in rows.items())}) "
        f"in {elapsed:.1f}s ({sum(rows.values()) / max(elapsed, 1e-9):,.0f} rows/s)")
    return schema


def field_min_counts(fmt: RawFormat, numeric: str, min_count: int, numeric_min_count: int | None) -> list[int]:
    """The min count of each sparse field, in output order: ``min_count``, and ``numeric_min_count``
    (when given) for the discretized numeric columns (Criteo's I1..I13).

    Example: ``field_min_counts(CRITEO, "discretize", 10, 1)`` -> ``[1] * 13 + [10] * 26``.
    """
    num = {c.name for c in fmt.columns if c.kind == "num"}
    names, _ = fmt.feature_names(numeric)
    low = min_count if numeric_min_count is None else numeric_min_count
    return [low if n in num else min_count for n in names]


def _convert_into(
    out: Path, cfg: ConvertConfig, fmt: RawFormat, files: list[str], file_splits: list[int], min_count: int,
    counts: list[int], fracs: tuple[float, float, float], log: Callable[[str], None], saved: SavedVocab | None,
) -> tuple[Schema, dict[str, int], float]:
    """The conversion proper, written into the (staging) dir ``out``: (schema, rows per split, seconds).

    ``counts``: each sparse field's min count (``field_min_counts``), ``min_count`` that of most.

    The vocabulary goes to ``out/vocab/`` (``saved_vocab``): counted here, or copied from ``saved``
    (``--vocab-from``), whose rows then take the single pass."""
    sparse_names, dense_names = fmt.feature_names(cfg.numeric)
    cache_dir = out / ".convert_cache"
    cache_dir.mkdir()
    vocab_dir = out / VOCAB_DIR
    vocab_dir.mkdir()
    cpu0 = time.process_time()
    engine, load_seconds = resolve_engine(cfg.engine, fmt.name, log=log)
    load_cpu = time.process_time() - cpu0
    job = Job(fmt.name, cfg.numeric, fracs, cfg.seed, cfg.hash_size, str(cache_dir), str(out), engine=engine,
              spill=cfg.workers > 1 and engine != "native")
    chunk_bytes = max(1 << 16, int(cfg.chunk_mb * (1 << 20)))
    # gzip chunks are counted in decompressed bytes, whose total is unknown up front
    total_bytes = None if any(is_gz(p) for p in files) else sum(os.path.getsize(p) for p in files)
    t0 = time.perf_counter()
    phases: dict[str, float] = {}  # wall seconds per phase, in meta.json: where a run's time went
    pool = make_pool(cfg.workers, engine, tune_malloc=cfg.tune_worker_malloc, close_fds=held_lock_fds())
    writer = SplitWriter(out, len(dense_names), len(sparse_names))
    bad = BadRowLog()
    try:
        tasks = make_tasks(files, file_splits, chunk_bytes)
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"{fmt.name}: read", disable=not cfg.progress)
        passes = _Passes(cfg, job, pool, writer, bad, bar, files, phases, t0, log)
        if saved is not None:
            if saved.mode == "min_count":
                shutil.copyfile(saved.dir / VOCAB_FILE, vocab_dir / VOCAB_FILE)
                passes.job = replace(job, vocab=VocabCache(str(vocab_dir / VOCAB_FILE)))
            passes.hash_pass(tasks)
            sizes = [s for _, s in saved.fields]
        elif cfg.hash_size is not None:
            passes.hash_pass(tasks)
            sizes = [cfg.hash_size] * len(sparse_names)
        else:
            sizes = passes.vocab_passes(tasks, counts, str(vocab_dir / VOCAB_FILE))
        rows = writer.rows()
        writer.commit()
    except ChunkFault as e:  # chunks come in order: every line before this chunk is counted
        if pool is not None:
            pool.terminate()
        writer.abort()
        line = bad.lines_before.get(e.file_idx, 0) + e.line
        raise InputError(f"{files[e.file_idx]}:{line}: {e.what}", exit_code=1) from None
    except BaseException:
        if pool is not None:
            pool.terminate()
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        shutil.rmtree(cache_dir, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    for example in bad.examples:
        log(f"warning: malformed row skipped: {example}")
    if bad.bad:
        log(f"warning: skipped {bad.bad} malformed rows of {bad.rows} ({100 * bad.bad / bad.rows:.3g}%)")
    preprocessing = _preprocessing_meta(cfg, fmt, files, fracs, min_count, chunk_bytes, job.engine, bad, elapsed,
                                        phases, load_seconds, load_cpu)
    counted = cfg.hash_size is None
    own = {n: c for n, c in zip(sparse_names, counts) if c != min_count} if counted else {}
    preprocessing["field_min_counts"] = own or None  # the fields whose min count is not min_count
    preprocessing["preset"] = cfg.preset or None
    mode = "hash" if cfg.hash_size is not None else "min_count"
    with writing(vocab_dir):
        preprocessing["vocab_sha256"] = write_manifest(
            vocab_dir, fmt.name, cfg.numeric if fmt.name == "criteo" else None, mode,
            None if cfg.hash_size is not None else min_count, cfg.hash_size, list(zip(sparse_names, sizes)),
            counts if counted else None)
    preprocessing["vocab_dir"] = VOCAB_DIR
    preprocessing["vocab_from"] = None if saved is None else str(saved.data_dir.resolve())
    schema = Schema(
        dataset=fmt.name,
        sparse_features=tuple(SparseFeature(n, s) for n, s in zip(sparse_names, sizes)),
        dense_features=tuple(dense_names),
        splits=rows,
        preprocessing=preprocessing,
    )
    with writing(out / META_FILE):
        schema.save(out)
    return schema, rows, elapsed


@dataclass
class _Passes:
    """The passes of one run over its chunk tasks: what both modes share, on the run's pool."""

    cfg: ConvertConfig
    job: Job
    pool: Pool | None
    writer: SplitWriter
    bad: BadRowLog
    bar: tqdm
    files: list[str]
    phases: dict[str, float]  # wall seconds per phase, from t0
    t0: float
    log: Callable[[str], None]

    def hash_pass(self, tasks: Iterator[Task]) -> None:
        """The single pass (``--hash``, or ``--vocab-from``): rows come back per chunk (or as a spill
        file) and are appended."""
        for res in ordered_map(run_hash_chunk, tasks, self.job, self.pool, self.cfg.workers):
            self.bad.add(res.stats)
            if res.spill is not None:
                assert res.spill_rows is not None
                self.writer.append_spill(res.spill, res.spill_rows)
                os.remove(res.spill)
            else:
                assert res.parts is not None
                self.writer.append(res.parts)
            self.bar.update(res.stats.n_bytes)
        self.bar.close()
        self.bad.check(self.cfg.max_bad_fraction, self.files)
        self.phases["hash_pass"] = time.perf_counter() - self.t0

    def vocab_passes(self, tasks: Iterator[Task], min_counts: list[int], vocab_path: str) -> list[int]:
        """Vocabulary mode: count (pass 1), build the vocabularies (saved to ``vocab_path``; field f
        keeps the values seen >= ``min_counts[f]`` times), map in place (pass 2); the sizes."""
        cfg, job, phases = self.cfg, self.job, self.phases
        counter = TrainCounts(len(min_counts), job.engine)
        caches: list[tuple[str, list[int]]] = []
        split_rows = [0] * len(SPLITS)
        for r in ordered_map(run_count_chunk, tasks, job, self.pool, cfg.workers):
            self.bad.add(r.stats)
            counter.add(r.counts)
            caches.append((r.cache_file, list(split_rows)))  # this chunk's row offsets
            split_rows = [a + b for a, b in zip(split_rows, r.split_rows)]
            self.bar.update(r.stats.n_bytes)
        self.bar.close()
        self.bad.check(cfg.max_bad_fraction, self.files)
        phases["count_pass"] = time.perf_counter() - self.t0
        vocab, sizes = build_vocab(counter.final(), min_counts, job.engine, self.pool)
        with writing(vocab_path):
            save_vocab(vocab_path, vocab)
        del vocab, counter
        job2 = replace(job, vocab=VocabCache(vocab_path))
        self.writer.preallocate(dict(zip(SPLITS, split_rows)))
        phases["vocabulary"] = time.perf_counter() - self.t0 - phases["count_pass"]
        if split_rows[0] == 0:
            self.log("warning: no good train rows: the vocabularies are empty and every id is the OOV id 0")
        for _ in tqdm(ordered_map(run_map_chunk, caches, job2, self.pool, cfg.workers), total=len(caches),
                      unit="chunk", desc=f"{job.fmt_name}: map", disable=not cfg.progress):
            pass
        phases["map_pass"] = time.perf_counter() - self.t0 - phases["count_pass"] - phases["vocabulary"]
        return sizes


def _preprocessing_meta(
    cfg: ConvertConfig, fmt: RawFormat, files: list[str], fracs: tuple[float, float, float], min_count: int,
    chunk_bytes: int, engine: str, bad: BadRowLog, elapsed: float, phases: dict[str, float], load_seconds: float,
    load_cpu: float,
) -> dict[str, Any]:
    """``meta.json``'s ``preprocessing``: how the arrays were made, so that a run can be redone."""
    preprocessing: dict[str, Any] = {
        "converter": f"data_prep/{fmt.name}_to_npy.py",
        "inputs": files,
        "split_mode": "files" if cfg.split_files else "random",
        "split": list(fracs) if not cfg.split_files else None,
        "split_files": cfg.split_files or None,
        "seed": cfg.seed,
        "vocab": "hash" if cfg.hash_size is not None else "min_count",
        "min_count": None if cfg.hash_size is not None else min_count,
        "hash_size": cfg.hash_size,
        "vocab_counted_on": None if cfg.hash_size is not None else "train",  # of vocab_from, if given
        "oov_id": None if cfg.hash_size is not None else 0,
        "numeric": cfg.numeric if fmt.name == "criteo" else None,
        "numeric_transform": (
            ("floor(ln(v)^2) if v > 2 else int(v); empty is its own token" if cfg.numeric == "discretize"
             else "log(1 + max(v, 0)); empty -> 0") if fmt.name == "criteo" else None
        ),
        "chunk_bytes": chunk_bytes,
        "engine": engine,
        # C kernels' build (first run of a source version) or load, before "seconds" starts
        "kernel_load_seconds": round(load_seconds, 3),
        "kernel_load_cpu_seconds": round(load_cpu, 3),
        "rows_read": bad.rows,
        "bad_rows": bad.bad,
        "max_bad_fraction": cfg.max_bad_fraction,
        "seconds": round(elapsed, 3),
        "phase_seconds": {k: round(v, 3) for k, v in phases.items()},
    }
    return preprocessing
