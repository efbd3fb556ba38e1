"""`python -m cli export --month YYYY-MM ...`: see `cli/export.py`; `python -m cli score INPUT.csv ...`:
see `cli/score.py`; `python -m cli eval --template NAME --dataset CASES.jsonl ...`: see `cli/eval.py`;
`python -m cli bootstrap --table STATE_TABLE`: the first operator key of a deployment, see `cli/bootstrap.py`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli import bootstrap, export, score
from cli import eval as eval_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cli", description="AI Gateway operator commands")
    commands = parser.add_subparsers(dest="command", required=True)
    export.add_parser(commands)
    score.add_parser(commands)
    eval_cmd.add_parser(commands)
    bootstrap.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
