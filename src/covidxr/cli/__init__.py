"""The ``covidxr`` command line: one sub-command per step of the pipeline.
Must not hold logic: each command parses its options and calls the package (see
:mod:`covidxr.cli.commands`). Heavy modules (keras, matplotlib) are imported inside the
commands, so that ``covidxr --version`` and ``covidxr --help`` answer at once.

Every anticipated failure (a bad option or file, a missing or unreadable path, a damaged file,
no network) ends in one line ``covidxr <command>: error: ...`` and exit status 2; Ctrl-C in
one line ``covidxr <command>: interrupted; ...`` (for ``train``: the ``--resume`` command that
continues the run) and exit status 130; ``--debug`` also prints the traceback. TensorFlow's
start-up lines and warnings' source lines are kept off the screen (:mod:`covidxr.cli.quiet`).
"""

from __future__ import annotations

import argparse
import sys
import traceback
import zipfile

from .. import RESEARCH_ONLY, __version__
from . import quiet
from .commands import COMMANDS
from .options import Parser

__all__ = ["ANTICIPATED", "COMMANDS", "INTERRUPTED", "build_parser", "describe_error", "describe_interrupt", "main"]

#: The failures reported as one line and exit status 2 (OSError covers missing, unreadable and
#: read-only paths, damaged image files and no network; ValueError every bad option or content;
#: ImportError an optional package that is not installed, e.g. a DICOM decoder plugin or Ray).
ANTICIPATED = (ValueError, OSError, ImportError, zipfile.BadZipFile)
#: The exit status after Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="covidxr",
        description="Transfer-learning chest X-ray classifiers for COVID-19 research. " + RESEARCH_ONLY,
    )
    parser.add_argument("--version", action="version", version=f"covidxr {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on a failure, print the traceback too (also after the command: train --debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="on a failure, print the traceback too")
    return parser


def describe_error(err: BaseException) -> str:
    """The one-line message of an anticipated failure: the package's own messages as they are;
    an operating-system error raised by a library as what went wrong and the path."""
    if isinstance(err, OSError) and err.strerror and getattr(err, "filename", None) is not None:
        return (f"Expected a path covidxr can use; {err.strerror.lower()} ({type(err).__name__}, errno {err.errno})."
                f" Received: path={str(err.filename)!r}")
    return " ".join(str(err).split()) or type(err).__name__


def describe_interrupt(args, err: KeyboardInterrupt) -> str:
    """The line Ctrl-C ends a command with: for ``train``, the ``--resume`` command that continues
    the run (the run folder :func:`covidxr.train.train` attaches to the interrupt as ``run_dir``);
    for ``grid``, that the same command continues; else to run the command again."""
    if args.command == "train":
        run = getattr(err, "run_dir", None) or getattr(args, "resume", None)
        if run is None:
            return "interrupted before the run folder was made; nothing to continue"
        return f"interrupted; `covidxr train --resume {run}` continues"
    if args.command == "grid":
        return f"interrupted; the same command (`covidxr grid --out {args.out} ...`) continues, keeping finished runs"
    return "interrupted; run the command again to redo it"


def main(argv=None) -> int:
    quiet.install()  # before anything imports TensorFlow (parsing --backbone reads the registry)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    _, run = COMMANDS[args.command]
    with quiet.quiet_warnings(debug=args.debug):
        try:
            return int(run(args) or 0)
        except ANTICIPATED as err:
            if args.debug:
                traceback.print_exc()
            print(f"covidxr {args.command}: error: {describe_error(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:  # Ctrl-C: one line that says how to go on
            if args.debug:
                traceback.print_exc()
            print(f"covidxr {args.command}: {describe_interrupt(args, err)}", file=sys.stderr)
            return INTERRUPTED
