"""Benchmarks: each module has a `main(**options)` that prints one table with ratios side by side.

Run them with `trtcompile bench NAME` or `python -m trtcompile.bench.NAME`. These machines are
noisy: tables quote medians and p99 over many iterations, and ratios measured in the same run.
"""
