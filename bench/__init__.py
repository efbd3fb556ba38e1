"""Benchmarks for the gateway: `python -m bench` (see bench/__main__.py for what is measured)."""
