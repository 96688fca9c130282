"""The `recon` command: subcommands only. Each lives in recon/commands/<name>.py and
exposes ``register(subparsers)`` (adds its parser and sets ``func``)."""

from __future__ import annotations

import argparse
import importlib
import sys

from recon import __version__
from recon.errors import ReconError

# Order is the order `recon --help` lists them in.
COMMANDS = ("info", "fit", "view", "eval", "bench", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recon",
        description="Reconstruct a 3D scene from a few photographs and render new views.",
    )
    parser.add_argument("--version", action="version", version=f"recon {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"recon.commands.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != f"recon.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):  # bare `recon`: a usage error, as argparse's own (exit 2)
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: choose a command ({', '.join(COMMANDS)}); `recon --help` describes them",
              file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except ReconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
