"""The `fedrecon` command: a thin dispatcher that imports only the subcommand it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

# command -> (module providing `register(parser)` and `run(args) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "server": ("fedrecon.server.cli", "run the prototype merge server (gRPC)"),
    "client": ("fedrecon.client.cli", "learn from image folders, sync, classify; push/pull/watch/info for scripts"),
    "encoder": ("fedrecon.client.encoder_cli", "describe an encoder: fingerprint, dim, preprocessing, training"),
    "admin": ("fedrecon.server.admin_cli", "revoke clients, stats and export (admin token)"),
    "pretrain": ("fedrecon.experiments.pretrain", "train a Conv4 prototypical network"),
    "fewshot": ("fedrecon.experiments.fewshot", "few-shot accuracy of an encoder"),
    "experiment": ("fedrecon.experiments.runner", "run a reconnaissance experiment"),
    "demo": ("fedrecon.experiments.demo", "offline demo: server + 3 client processes on glyphs"),
    "bench": ("fedrecon.benchmarks.suite", "run the benchmarks and print JSON"),
}


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose help shows every option's default (nested subcommands inherit the class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; only `command`'s module is imported (others stay lazy)."""
    parser = Parser(prog="fedrecon", description=__doc__)
    from fedrecon import __version__

    parser.add_argument("--version", action="version", version=f"fedrecon {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.register(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def one_line(error: BaseException) -> str:
    """An error as one line: its message (first line), or its type when it has none."""
    text = str(error).strip().splitlines()
    message = text[0] if text else type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message += f": {error.filename}"
    return message


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code.

    Any error ends as one line on stderr and exit code 2; `--debug` (anywhere) shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"fedrecon {args.command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as stop:
        if isinstance(stop.code, str):  # SystemExit("message"): a refusal already worded for the user
            if debug:
                raise
            print(f"fedrecon {args.command}: error: {stop.code}", file=sys.stderr)
            return 2
        raise
    except Exception as error:  # noqa: BLE001 - the one place errors become messages
        if debug:
            raise
        print(f"fedrecon {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
