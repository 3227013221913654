"""Raw Criteo / Avazu / KDD12 logs -> ``meta.json`` + ``{split}_{dense,sparse,labels}.npy``.

Why it looks like this (speed and memory are requirements, not niceties):

* **No per-row Python.**  Criteo chunks (``--chunk-mb``, default 16 MB) go through a
  compiled single-pass scanner (``kernels``, C): one loop over the
  bytes tokenizes, parses numbers, applies ln^2 and hashes every field to a 64-bit
  key, ~0.7 us/row.  ``--hash`` maps the keys straight to ids; vocabulary mode
  dictionary-encodes them per chunk (row -> index of the chunk's distinct value) so
  that everything per value (counting, vocabulary lookup) runs on distinct values.
  Avazu/KDD12 (and ``--engine arrow``) use pyarrow's C++ CSV reader and a
  dictionary encode per column instead; both engines give identical outputs.
* **Parallel** over chunks in ``--workers`` threads (the C engine: its kernels
  release the GIL) or forked processes (pyarrow); results are consumed in chunk
  order, so the output never depends on the worker count.  In pass 2 the
  workers write their rows in place (``pwrite``) into the preallocated outputs
  (offsets are known from pass 1); process workers in ``--hash`` mode spill each
  chunk to a file that the parent appends with ``copy_file_range``, so no output
  rows travel through the pool's pipes.
* **Vocabularies on train only.**  Pass 1 counts each field's values on the
  train rows and caches every chunk's row indices to a scratch dir; pass 2 maps
  the cache to contiguous ids (value seen >= ``--min-count`` times -> 1..V by
  descending count, else OOV id 0; Criteo's numeric tokens may have their own
  ``--numeric-min-count``, 1 under ``--preset tts4ctr`` as in the official code).
  With ``--hash N`` there is a single pass (id = stable 64-bit hash % N) and memory
  is bounded by chunk size x workers, whatever the input size.  Values are identified by a 64-bit hash; two distinct
  values of one field collide with probability ~ n^2 / 2^65 (1e-5 for 10M values).
* **The vocabulary is saved** in ``vocab/`` beside ``meta.json`` (``saved_vocab``), covered by
  ``meta.json``'s sha256 of each file; ``--vocab-from DIR`` maps new raw files with DIR's
  vocabulary in a single pass (unseen values -> OOV, the same table sizes), and
  ``raw_rows.RawRowEncoder`` maps raw rows for serving through the same parse and lookup.
* **Splits** are a seeded random 8:1:1 (``--split``) drawn per chunk from
  ``(seed, file, chunk)``, or explicit files (``--train/--val/--test``).
* **Atomic.**  The whole conversion (arrays, ``meta.json``, the pass-1 cache) is
  written to a staging directory beside the output, ``.<name>.convert-<pid>-<hex>``
  in the same parent (so the same filesystem), and swapped in when complete by one
  ``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two renames, which a next run
  repairs if killed between them).  Until that swap the previous conversion is
  untouched, whatever happens: bad input found late, too many bad rows, disk full,
  Ctrl-C, ``kill -9``.  Files in the output dir that are not the converter's
  (notes, raw inputs) are moved into the new conversion, never dropped.  A run
  holds an ``flock`` on its staging dir; the next run deletes the staging dirs
  whose owner is gone (and puts back any moved files), and refuses to start while
  another live run converts into the same output.  The cost: old and new
  conversion coexist on disk while a run lasts.  (No ``fsync``: this survives a
  killed process, not a power cut.)
* **Bad rows** (wrong column count, non-numeric value in a numeric column) are
  dropped, counted and the first few reported as ``file:line: reason 'value'``;
  above ``--max-bad-fraction`` the run fails with exit code 1.  Bad flags, a
  missing/empty/binary file, the wrong dataset or an unusable output path stop the
  run before any work with exit code 2; so does a truncated ``.gz`` found later.
* **Never non-finite.**  Numbers are finite or the row is bad (``inf``, ``nan``,
  ``1e309``); dense blocks are checked with ``np.isfinite`` before they are written,
  so a NaN that slipped through would stop the run at its ``file:line``.

The modules, in the order the data flows through them:

=================  ======================================================================
``chunks``         input checks (missing, empty, binary, damaged .gz, wrong dataset); chunk tasks
``formats``        each dataset's raw columns, and how a column's distinct values become keys
``parse_arrow``    pyarrow engine: chunk -> ``Parsed`` (any dataset)
``parse_native``   C engine: Criteo chunk -> ``Scanned``; which engine a run uses
``kernels``        the C kernels' ctypes wrappers (scan, dictionary encode, merge, lookup)
``parsed``         what a parser hands back, and the bad-row texts both engines share
``vocab``          train counts, min-count vocabularies with OOV 0, the lookup, ``VocabCache``
``saved_vocab``    ``vocab/`` beside ``meta.json``: manifest, keys and ids, checksums; ``--vocab-from``
``passes``         one chunk's work in each pass (hash; count; map)
``pool``           threads or forked processes, results in chunk order
``writer``         the nine streamed ``.npy`` outputs
``staging``        the staging dir, the atomic swap, recovery after a kill
``badrows``        the bad-row log and ``--max-bad-fraction``
``driver``         ``ConvertConfig``, ``check_config``, ``convert``
``presets``        ``--preset tts4ctr``: the official preprocessing where a flag is left unset
``cli``            ``data_prep/*_to_npy.py`` and ``python -m recsys.data.convert DATASET``: flags,
                   exit codes, one-line errors
``raw_rows``       raw request rows -> ids through the same parse and lookup (serving, scoring)
=================  ======================================================================

Example::

    from recsys.data.convert import ConvertConfig, convert
    schema = convert(ConvertConfig(dataset="criteo", inputs=["day_0.gz"], output="data/criteo"))
"""
from __future__ import annotations

from recsys.data.convert.cli import build_parser, main
from recsys.data.convert.driver import MAX_HASH, ConvertConfig, check_config, convert
from recsys.data.convert.errors import ChunkFault, InputError
from recsys.data.convert.raw_rows import RawRowEncoder, RowError
from recsys.data.convert.saved_vocab import VocabError, open_vocab
from recsys.data.convert.splits import SPLITS
from recsys.data.convert.writer import NpyAppender, SplitWriter

__all__ = ["MAX_HASH", "SPLITS", "ChunkFault", "ConvertConfig", "InputError", "NpyAppender", "RawRowEncoder",
           "RowError", "SplitWriter", "VocabError", "build_parser", "check_config", "convert", "main", "open_vocab"]
