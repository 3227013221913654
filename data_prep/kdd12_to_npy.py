"""Convert raw kdd12 logs to recsys npy arrays + meta.json (a thin CLI; see recsys/data/convert/).

Run `python data_prep/kdd12_to_npy.py --help` for flags and examples.
"""
import os
import sys

# numpy's OpenBLAS threads spin for ~0.1 s of CPU after import, taking a core from the
# converter's workers on a small machine; the converters never call BLAS
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from recsys.data.convert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("kdd12"))
