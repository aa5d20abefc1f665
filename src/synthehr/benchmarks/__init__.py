"""Benchmark suites. Each writes benchmarks/results/<suite>-<dataset>.json (one long format) + .md."""
