"""Checks of the benchmark scripts' own options: one line naming the option, the value and what is allowed."""

from __future__ import annotations

import argparse
import sys


def refuse_names(prog: str, option: str, given: str, names: list[str], allowed: tuple[str, ...] | list[str]) -> bool:
    """Print why ``names`` (from ``--option=given``) are refused, if any is unknown or none is given; True when refused."""
    if names and all(name in allowed for name in names):
        return False
    print(f"{prog}: error: --{option}={given!r} is not valid: expected names among {', '.join(allowed)}", file=sys.stderr)
    return True


def refuse_below_one(prog: str, args: argparse.Namespace, options: tuple[str, ...]) -> bool:
    """Print why the first of ``options`` under 1 is refused, if any; True when refused."""
    for option in options:
        if getattr(args, option) < 1:
            print(f"{prog}: error: --{option.replace('_', '-')}={getattr(args, option)} is not valid: expected a whole number >= 1",
                  file=sys.stderr)  # fmt: skip
            return True
    return False
