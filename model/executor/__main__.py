"""``python -m model.executor server|client ...``: the executor's subcommands on their own."""

from __future__ import annotations

import argparse
import sys

from model.executor.cli import add_subcommands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ivshmem-model")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
