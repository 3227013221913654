"""Write synthetic raw click logs in the real Criteo / Avazu / KDD12 formats.

Labels come from a planted model with pairwise field interactions (``--signal pairwise``,
the default) or with half of the interaction variance moved into third-order terms over
random field triples (``--signal higher-order``: something for deeper cross nets and wider
MLPs to find that a pairwise model cannot); the planted model's own AUC on the written rows
(the ceiling any model can reach) is printed.  See recsys/data/synth.py.

Examples:
  python data_prep/synthesize.py --dataset criteo --rows 1000000 --output data/raw/criteo.tsv.gz
  python data_prep/synthesize.py --dataset criteo --rows 2000000 --output data/raw/criteo.tsv --signal higher-order
  python data_prep/synthesize.py --dataset avazu --rows 100000 --output data/raw/avazu.csv --seed 1
  python data_prep/synthesize.py --dataset kdd12 --rows 100000 --output data/raw/training.txt
"""
from __future__ import annotations

import sys
import time

from recsys.cli import parser_with_examples, run_main
from recsys.data.synth import DATASETS, SIGNALS, write
from recsys.errors import UserError


class SynthesizeError(UserError, OSError):
    """The output cannot be written (a directory, no permission, a full disk): one line."""


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    p = parser_with_examples("data_prep/synthesize.py", doc.split("\n\n")[0],
                             "examples:\n" + doc.split("Examples:\n", 1)[1])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--rows", required=True, type=int, help="number of rows to write")
    p.add_argument("--output", required=True, help="output file; gzip-compressed if it ends in .gz")
    p.add_argument("--seed", type=int, default=0, help="seeds both the planted model and the rows")
    p.add_argument("--signal", choices=SIGNALS, default="pairwise",
                   help="planted interactions: pairwise (default) or higher-order (half of the "
                        "interaction variance in third-order terms; same first-order and row draws)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.rows < 0:
        p.error("--rows must be >= 0")

    def body() -> int:
        t = time.perf_counter()
        try:
            planted_auc = write(args.dataset, args.output, args.rows, args.seed, progress=not args.no_progress,
                                signal=args.signal)
        except OSError as e:
            raise SynthesizeError(f"{args.output}: {e.strerror or e}") from None
        dt = time.perf_counter() - t
        print(f"wrote {args.rows:,} {args.dataset} rows ({args.signal} signal) to {args.output} in {dt:.1f}s "
              f"({args.rows / max(dt, 1e-9):,.0f} rows/s); planted model AUC (ceiling) = {planted_auc:.4f}")
        return 0

    return run_main("synthesize", body)


if __name__ == "__main__":
    sys.exit(main())
