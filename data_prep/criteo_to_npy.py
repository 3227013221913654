"""Convert raw criteo logs to recsys npy arrays + meta.json (a thin CLI; see recsys/data/preprocess.py).

Run `python data_prep/criteo_to_npy.py --help` for flags and examples.
"""
import sys

from recsys.data.preprocess import main

if __name__ == "__main__":
    sys.exit(main("criteo"))
