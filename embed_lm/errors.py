"""The user-error type, and how entry points report it.

A UserError is a mistake the user can fix from its message alone (a bad option value, a missing file, a folder that
asks to run code): entry points print `error: <message>` and exit with status 2, no traceback. Anything else is a
bug and keeps its traceback. EMBED_LM_TRACEBACK=1 (or HYDRA_FULL_ERROR=1 for the Hydra entry points) shows the
traceback of a user error too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A mistake in what the user gave us; the message names the option, file or folder to change."""


class ConfigError(UserError, ValueError):
    """A config option holds a value outside its allowed range (the message names the option and the range)."""


class UnsafeFileError(UserError):
    """A file or folder asks to run code (a pickled object, a `_target_` outside the allow-list): refused."""


class ResumeMismatchError(UserError):
    """The config differs from the one a checkpoint or a finished run folder was trained with."""


def exit_on_user_error(fn: Callable[..., Any], *args: Any, errors: tuple[type[BaseException], ...] = (UserError,),
                       env: tuple[str, ...] = ("EMBED_LM_TRACEBACK",)) -> Any:
    """fn(*args); an exception of `errors` becomes `error: <message>` on stderr and exit status 2."""
    try:
        return fn(*args)
    except errors as e:
        if any(os.environ.get(name) == "1" for name in env):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
