"""Benchmarks for `make bench`: each `bench_*.py` module exposes `run(cache_dir) -> list[dict]`."""
