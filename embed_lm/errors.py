"""The user-error hierarchy, and how every entry point reports it.

A UserError is a mistake the user can fix from its message alone (a bad option value, a missing or damaged file, a
folder that asks to run code, a server that cannot be reached): every entry point (train, evaluate, encode, export,
mine, synth, passkey, report, plan) prints `error: <message>` as one line on stderr and exits with status 2, no
traceback. Every refusal in embed_lm derives from UserError (some also from the built-in they replace, e.g.
ConfigError is a ValueError, so library-style `except ValueError` callers keep working), and entry points catch
UserError only: a plain ValueError, KeyError or FileNotFoundError is a bug and keeps its traceback.
EMBED_LM_TRACEBACK=1 (or HYDRA_FULL_ERROR=1) shows the traceback of a user error too.

    from embed_lm.errors import ConfigError, exit_on_user_error
    raise ConfigError("data.batch_size=0: must be an integer >= 1")
    exit_on_user_error(train, cfg)      # what an entry point's main() does
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

USER_ERROR_EXIT = 2
TRACEBACK_ENV = ("EMBED_LM_TRACEBACK", "HYDRA_FULL_ERROR")


class UserError(Exception):
    """A mistake in what the user gave us; the message names the option, file:line or folder, and the fix."""


class ConfigError(UserError, ValueError):
    """A config option or command-line flag holds a value outside its allowed range (the message names the option
    and the range)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (an option, a glob, a run folder) does not exist."""


class FileConflictError(UserError, FileExistsError):
    """An output the user named exists already and would be overwritten (the message names the flag that allows
    it)."""


class UnsafeFileError(UserError):
    """A file or folder asks to run code (a pickled object, a `_target_` outside the allow-list): refused."""


class ResumeMismatchError(UserError):
    """The config differs from the one a checkpoint or a finished run folder was trained with."""


def one_line(message: object) -> str:
    """The message on one line (a multi-line message keeps its lines, joined by ' | ')."""
    return " | ".join(line.strip() for line in str(message).splitlines() if line.strip())


def user_error_of(error: BaseException) -> UserError | None:
    """The UserError that `error` is or wraps (Hydra's instantiate wraps a constructor's refusal in an
    InstantiationException, its cause); None for anything else, which is a bug."""
    if isinstance(error, UserError):
        return error
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException):
        return user_error_of(error.__cause__) if error.__cause__ is not None else None
    return None


def exit_on_user_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs); a UserError becomes `error: <message>` (one line) on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # re-raised unless it is (or wraps) a UserError: a bug keeps its traceback
        user = user_error_of(e)
        if user is None or any(os.environ.get(name) == "1" for name in TRACEBACK_ENV):
            raise
        print(f"error: {one_line(user)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
