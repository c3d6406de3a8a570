"""The command line of the non-Hydra entry points: one parser, KeyValueParser, that reads `--flag value` and also
Hydra's `key=value` for its own options (`run=<dir>` is `--run <dir>`), and prints a user error as one line without
a traceback, exit status 2 (EMBED_LM_TRACEBACK=1 shows the traceback).

    python -m embed_lm.encode run=<run> input=docs.jsonl output=docs.npy     # = --run <run> --input ... --output ...
    python -m embed_lm.encode --help                                         # every entry point documents its options

One CLI style: every entry point takes `key=value` and `--help`. Hydra (config groups, sweeps, a run folder per
invocation) runs the ones that build a model from a config: train, evaluate, mine, synth, passkey, plan. These use
KeyValueParser instead, and why:
- encode, export: a file in, a file or folder out, from a run folder that already holds its config; nothing to
  compose, and a Hydra run folder (.hydra/, a log) per call would litter the output's folder.
- report (table4 | runs), synth.report, passkey.plot: read finished folders named as positional arguments (any
  number of run folders), which Hydra's key=value grammar cannot take; subcommands.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence

from embed_lm.errors import ConfigError, exit_on_user_error

KEY_VALUE = re.compile(r"^([A-Za-z][\w-]*)=(.*)$", re.S)


class UsageError(ConfigError):
    """A bad combination of options; the message says which option to change."""


class KeyValueParser(argparse.ArgumentParser):
    """An ArgumentParser that reads a `key=value` token as `--key value` when --key is one of its options and the
    token is not the value of the flag before it (`--task x=y` keeps `x=y`). Subcommand parsers inherit it."""

    def __init__(self, *args, **kwargs) -> None:
        self.flags: set[str] = set()  # every option string added (before super(): it adds --help)
        self.value_flags: set[str] = set()  # those that take a value
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flags.update(action.option_strings)
        if action.nargs != 0:
            self.value_flags.update(action.option_strings)
        return action

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        args = self.key_values_as_flags(list(sys.argv[1:] if args is None else args))
        return super().parse_known_args(args, namespace)

    def key_values_as_flags(self, argv: list[str]) -> list[str]:
        out: list[str] = []
        for i, token in enumerate(argv):
            m = KEY_VALUE.match(token)
            flag = f"--{m[1].replace('_', '-')}" if m else None
            if flag in self.flags and not (i and argv[i - 1] in self.value_flags):
                out += [flag, m[2]]
            else:
                out.append(token)
        return out


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parser.parse_args(argv) (kept for callers; a KeyValueParser reads key=value itself)."""
    return parser.parse_args(argv)


def run_main(main: Callable[[], None]) -> None:
    """Call main(); print a user error (embed_lm.errors.UserError) as `error: ...` and exit 2."""
    exit_on_user_error(main)


def check_at_least(**values: tuple[int | None, int]) -> None:
    """UsageError for the first option whose value is set and below its minimum: check_at_least(batch_size=(0, 1))."""
    for name, (value, low) in values.items():
        if value is not None and value < low:
            raise UsageError(f"--{name.replace('_', '-')}={value}: must be an integer >= {low}")
