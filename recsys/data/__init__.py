"""Data: schemas, raw-to-npy preprocessing and the memmap loader."""
