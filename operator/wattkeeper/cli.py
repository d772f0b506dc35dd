"""The `wattkeeper` command. Each subcommand lives with the component it drives and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# module path -> its `register(subparsers)` adds one or more subcommands. Imported lazily so that
# `wattkeeper crds` does not pay for scipy and `wattkeeper run` does not pay for matplotlib.
SUBCOMMAND_MODULES = {
    "crds": "wattkeeper.api.crdgen",
    "calibrate": "wattkeeper.energy.cli",
    "predict": "wattkeeper.energy.cli",
    "plan": "wattkeeper.planner.cli",
    "run": "wattkeeper.controller.cli",
    "bench": "wattkeeper.bench.cli",
    "profile": "wattkeeper.controller.profilecli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wattkeeper", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seen: set[str] = set()
    for name, module_name in SUBCOMMAND_MODULES.items():
        if module_name in seen or (only is not None and name != only):
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a component not built yet, or an optional dependency missing
            if only is not None:
                raise SystemExit(f"wattkeeper {name}: {exc}") from exc
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = args_list[0] if args_list and not args_list[0].startswith("-") else None
    parser = build_parser(first if first in SUBCOMMAND_MODULES else None)
    args = parser.parse_args(args_list)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
