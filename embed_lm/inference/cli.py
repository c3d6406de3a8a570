"""Shared by the plain (non-Hydra) entry points, embed_lm.encode and embed_lm.export: `key=value` arguments next to
`--flags` (`run=<dir>` is `--run <dir>`), and errors a user can act on printed as one line, without a traceback,
exit status 2 (EMBED_LM_TRACEBACK=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence

from embed_lm.errors import ConfigError, exit_on_user_error


class UsageError(ConfigError):
    """A bad combination of options; the message says which option to change."""


KEY_VALUE = re.compile(r"^([A-Za-z][\w-]*)=(.*)$", re.S)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse argv, reading a `key=value` token as `--key value` when --key is an option and the token is not the
    value of the flag before it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = parser._option_string_actions  # noqa: SLF001 (argparse's table of option strings)
    out: list[str] = []
    for i, token in enumerate(argv):
        prev = flags.get(argv[i - 1]) if i else None
        is_value = prev is not None and prev.nargs != 0
        m = KEY_VALUE.match(token)
        if m and not is_value and f"--{m[1].replace('_', '-')}" in flags:
            out += [f"--{m[1].replace('_', '-')}", m[2]]
        else:
            out.append(token)
    return parser.parse_args(out)


def run_main(main: Callable[[], None]) -> None:
    """Call main(); print a user error (embed_lm.errors.UserError) as `error: ...` and exit 2."""
    exit_on_user_error(main)


def check_at_least(**values: tuple[int | None, int]) -> None:
    """UsageError for the first option whose value is set and below its minimum: check_at_least(batch_size=(0, 1))."""
    for name, (value, low) in values.items():
        if value is not None and value < low:
            raise UsageError(f"--{name.replace('_', '-')}={value}: must be an integer >= {low}")
