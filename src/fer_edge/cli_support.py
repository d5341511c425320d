"""What every fer-edge command shares: a parser with a real --version and no prefix matching, one error format
and one set of exit codes.

Exit codes: 0 done; 1 a check ran and failed (e.g. gpu_check found a mismatch); 2 bad input or a fer-edge error,
printed as one line `<prog>: error: <message>`; 130 interrupted by Ctrl-C.
"""
from __future__ import annotations

import argparse
import platform
import sys
from typing import Callable, List, Optional

import fer_edge

from fer_edge.runtime.errors import FerEdgeError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def version_text(prog: str) -> str:
    return f"{prog} (fer-edge {fer_edge.__version__}, Python {platform.python_version()}, {platform.machine()})"


def new_parser(prog: str, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser with --version. allow_abbrev=False: argparse would otherwise read `--version` as a
    prefix of a longer flag such as `--version-compatible` and run a whole command instead of printing it."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False, **kwargs)
    parser.add_argument("--version", action="version", version=version_text(prog))
    return parser


def fail(prog: str, message: str) -> int:
    """Print one error line and return the error exit code."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def run_cli(prog: str, body: Callable[[List[str]], int], argv: Optional[List[str]] = None,
            interrupted: str = "interrupted") -> int:
    """Run a command's body with the shared error handling: a FerEdgeError becomes one line and exit 2, Ctrl-C 130.

    Anything else is a bug in fer-edge and keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return body(argv)
    except FerEdgeError as exc:
        return fail(prog, str(exc))
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
