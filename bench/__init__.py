"""Benchmark scripts for rank1_integrations (run as ``python -m bench.<name>``; see bench/README.md)."""
