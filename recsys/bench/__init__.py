"""Benchmarks: each module runs as ``python -m recsys.bench.<name>``."""
