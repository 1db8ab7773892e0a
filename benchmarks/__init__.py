"""Benchmarks: run from the repository root as `python -m benchmarks.NAME`; JSON lines on stdout."""
