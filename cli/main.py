"""The `fedrecon` command: a thin dispatcher that imports only the subcommand it runs."""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module providing `register(parser)` and `run(args) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "server": ("fedrecon.server.cli", "run the prototype merge server (gRPC)"),
    "client": ("fedrecon.client.cli", "push, pull, watch and inspect a server from scripts"),
    "admin": ("fedrecon.server.admin_cli", "revoke clients, stats and export (admin token)"),
    "pretrain": ("fedrecon.experiments.pretrain", "train a Conv4 prototypical network"),
    "fewshot": ("fedrecon.experiments.fewshot", "few-shot accuracy of an encoder"),
    "experiment": ("fedrecon.experiments.runner", "run a reconnaissance experiment"),
    "demo": ("fedrecon.experiments.demo", "offline demo: server + 3 client processes on glyphs"),
    "bench": ("fedrecon.benchmarks.suite", "run the benchmarks and print JSON"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; only `command`'s module is imported (others stay lazy)."""
    parser = argparse.ArgumentParser(prog="fedrecon", description=__doc__)
    from fedrecon import __version__

    parser.add_argument("--version", action="version", version=f"fedrecon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.register(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
