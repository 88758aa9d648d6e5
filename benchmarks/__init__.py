"""Benchmarks: each module has main(argv) and writes JSON + a PNG."""
