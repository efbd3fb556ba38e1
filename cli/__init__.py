"""Operator command line: `python -m cli <command>` (not shipped to Lambda)."""
