"""The ``covidxr`` command line: one sub-command per step of the pipeline.
Must not hold logic: each command parses its options and calls the package (see
:mod:`covidxr.cli.commands`). Heavy modules (keras, matplotlib) are imported inside the
commands, so that ``covidxr --version`` and ``covidxr --help`` answer at once.
"""

from __future__ import annotations

import argparse
import sys

from .. import RESEARCH_ONLY, __version__
from .commands import COMMANDS

__all__ = ["COMMANDS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidxr",
        description="Transfer-learning chest X-ray classifiers for COVID-19 research. " + RESEARCH_ONLY,
    )
    parser.add_argument("--version", action="version", version=f"covidxr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    _, run = COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as err:
        print(f"covidxr {args.command}: error: {err}", file=sys.stderr)
        return 2
