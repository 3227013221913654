"""The converter CLIs (``data_prep/{criteo,avazu,kdd12}_to_npy.py``): flags -> ``convert``.

Why the exit codes differ: 2 for unusable flags, input or output (found before any work,
or a truncated ``.gz`` found later), 1 when the data fails a check during the run (too many
bad rows), 130/143 when interrupted/terminated.  Every error is one line,
``<dataset>_to_npy: error: ...``; whatever fails, the previous conversion in ``--output`` is
left as it was.  This process is the converter's alone, so ``main`` tunes its malloc
(``pool.keep_freed_memory``) and turns SIGTERM into an exception that cleans up.

Example::

    python data_prep/criteo_to_npy.py --input day_0.gz --output data/criteo --workers 4
    main("criteo", ["--input", "day_0.gz", "--output", "data/criteo"])   # 0, or 1/2 and one line
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from types import FrameType

import pyarrow as pa

from recsys.cli import error_line, run_main
from recsys.data.convert.driver import ConvertConfig, convert
from recsys.data.convert.errors import InputError
from recsys.data.convert.formats import FORMATS
from recsys.data.convert.pool import keep_freed_memory
from recsys.data.convert.presets import PRESETS
from recsys.data.convert.splits import SPLITS
from recsys.errors import one_line


def build_parser(dataset: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``data_prep/<dataset>_to_npy.py`` (or ``prog``), with examples in ``--help``."""
    fmt = FORMATS[dataset]
    script = f"data_prep/{dataset}_to_npy.py"
    run = prog or f"python {script}"
    ex = {
        "criteo": "day_0.gz day_1.gz",
        "avazu": "train.gz",
        "kdd12": "training.txt",
    }[dataset]
    p = argparse.ArgumentParser(
        prog=prog or script,
        description=(
            f"Convert raw {dataset} logs to recsys npy arrays + meta.json. Vocabularies are counted "
            f"on the train split only (values seen < --min-count times -> OOV id 0), or --hash N."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            f"  {run} --input {ex} --output data/{dataset}\n"
            f"  {run} --input {ex} --output data/{dataset}_paper --preset tts4ctr\n"
            f"  {run} --input {ex} --output data/{dataset}_h --hash 1000000 --workers 4\n"
            f"  {run} --train {ex.split()[0]} --val {ex.split()[0]} --test {ex.split()[0]} "
            f"--output data/{dataset}_days\n"
            f"  {run} --test {ex.split()[-1]} --output data/{dataset}_new --vocab-from data/{dataset}\n"
        ),
    )
    p.add_argument("--input", nargs="+", default=[], metavar="FILE", help="raw files (.gz ok), split randomly")
    p.add_argument("--train", nargs="+", default=[], metavar="FILE", help="explicit train files")
    p.add_argument("--val", nargs="+", default=[], metavar="FILE", help="explicit validation files")
    p.add_argument("--test", nargs="+", default=[], metavar="FILE", help="explicit test files")
    p.add_argument("--output", required=True, metavar="DIR")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--min-count", type=int, default=None,
                   help=f"min train count to get an own id (default {fmt.default_min_count})")
    g.add_argument("--hash", type=int, default=None, metavar="N",
                   help="map values by a stable hash mod N (single pass, bounded memory)")
    g.add_argument("--vocab-from", default=None, metavar="DIR",
                   help="map with the saved vocabulary of an earlier conversion DIR (its vocab/): nothing "
                        "is counted, unseen values get the OOV id, meta.json keeps DIR's vocabulary sizes")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    if any(c.kind == "num" for c in fmt.columns):
        p.add_argument("--numeric", choices=["discretize", "dense"], default="discretize",
                       help="discretize: floor(ln(v)^2) tokens (paper); dense: log(1+v) floats")
        p.add_argument("--numeric-min-count", type=int, default=None, metavar="N",
                       help="min train count of a discretized numeric token (default: --min-count; "
                            "--preset tts4ctr: 1, every token seen in train gets its own id, as the official code)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="",
                   help="tts4ctr: preprocess as the official TTS4CTR code (its min-count threshold, Criteo's "
                        "numeric tokens exempt from it); flags given explicitly win")
    p.add_argument("--max-bad-fraction", type=float, default=0.001)
    p.add_argument("--chunk-mb", type=float, default=16.0, help="bytes per parallel chunk (MB)")
    p.add_argument("--engine", choices=["auto", "native", "arrow"], default="auto",
                   help="parser: native = compiled single-pass C scanner (Criteo; auto picks it when a C "
                        "compiler is there to build it once), arrow = pyarrow CSV reader (all datasets)")
    p.add_argument("--no-progress", action="store_true")
    return p


class Terminated(BaseException):
    """SIGTERM in a CLI run: unwinds like Ctrl-C, so the staging dir is removed (``kill -9``
    cannot be caught; the next run removes what it leaves)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _split_value_fix(given: list[str]) -> list[str]:
    """``--split -0.1,0.6,0.5``: argparse would take the value for a flag; glue it to the flag
    so that ``check_config`` says what is wrong with it."""
    given, fixed = list(given), []
    while given:
        a = given.pop(0)
        if a == "--split" and given and re.match(r"-[0-9.]", given[0]):
            a = f"--split={given.pop(0)}"
        fixed.append(a)
    return fixed


def config_from_args(dataset: str, args: argparse.Namespace) -> ConvertConfig:
    """The ``ConvertConfig`` the parsed flags ask for; ``InputError`` for flags that contradict."""
    explicit = {s: getattr(args, s) for s in SPLITS if getattr(args, s)}
    if args.input and explicit:
        raise InputError("give either --input or --train/--val/--test, not both")
    try:
        split = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        raise InputError(f"--split wants three fractions like 0.8,0.1,0.1, got {args.split!r}") from None
    return ConvertConfig(
        dataset=dataset, output=args.output, inputs=args.input, split_files=explicit, split=split,
        seed=args.seed, min_count=args.min_count, hash_size=args.hash,
        numeric=getattr(args, "numeric", "discretize"), workers=args.workers,
        max_bad_fraction=args.max_bad_fraction, chunk_mb=args.chunk_mb, progress=not args.no_progress,
        engine=args.engine, vocab_from=args.vocab_from,
        numeric_min_count=getattr(args, "numeric_min_count", None), preset=args.preset,
    )


def _run(prog: str, cfg: ConvertConfig) -> int:
    """One conversion in this (CLI) process: its own exit codes for a failed data check (1) and
    a stop (130/143); every other user error goes on to ``run_main`` as one line and 2."""
    keep_freed_memory()  # this process is ours alone (a CLI run): the in-process worker gains too
    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        convert(cfg, log=lambda s: print(s, file=sys.stderr))
    except InputError as e:
        if e.exit_code == 2:
            raise
        print(error_line(prog, e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {cfg.output} left as it was", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated; {cfg.output} left as it was", file=sys.stderr)
        return 143
    except OSError as e:  # outside the run proper (convert names the files of the run's own errors)
        # printed here, not raised on to run_main: a file name is shown as it is, whitespace and all
        print(f"{prog}: error: {e.filename or cfg.output}: {e.strerror or one_line(e)}", file=sys.stderr)
        return 2
    except pa.ArrowException as e:  # a parse failure we did not anticipate: still one line
        raise InputError(f"cannot parse input: {one_line(str(e).splitlines()[0])}") from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, old_term)
    return 0


def main(dataset: str, argv: list[str] | None = None) -> int:
    """CLI entry: one-line errors; exit code 2 for unusable flags, input or output, 1 when the
    data fails a check during the run (too many bad rows), 130/143 when interrupted/terminated.
    Whatever fails, the previous conversion in --output is left as it was."""
    args = build_parser(dataset).parse_args(_split_value_fix(sys.argv[1:] if argv is None else argv))
    prog = f"{dataset}_to_npy"
    return run_main(prog, lambda: _run(prog, config_from_args(dataset, args)))


def module_main(argv: list[str] | None = None) -> int:
    """``python -m recsys.data.convert DATASET [flags]``: the same CLI as ``data_prep/<DATASET>_to_npy.py``.

    Example: ``python -m recsys.data.convert criteo --input day_0.gz --output data/criteo --preset tts4ctr``
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = "python -m recsys.data.convert"
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {{{','.join(FORMATS)}}} [flags]\n\n"
              "Convert raw logs to recsys npy arrays + meta.json; the flags are those of "
              "data_prep/<dataset>_to_npy.py.\n\nexamples:\n"
              f"  {prog} criteo --input day_0.gz --output data/criteo\n"
              f"  {prog} avazu --input train.gz --output data/avazu --preset tts4ctr\n"
              f"  {prog} criteo --help", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    dataset, rest = argv[0], argv[1:]
    if dataset not in FORMATS:
        print(f"{prog}: error: unknown dataset {dataset!r}; choose from {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    args = build_parser(dataset, prog=f"{prog} {dataset}").parse_args(_split_value_fix(rest))
    name = f"{dataset}_to_npy"
    return run_main(name, lambda: _run(name, config_from_args(dataset, args)))
