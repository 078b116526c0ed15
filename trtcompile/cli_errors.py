"""How every CLI command reports a user error: one message, exit code 1, no traceback."""

from __future__ import annotations

import functools
import sys

import click


def user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from trtcompile.errors import UserError
        from trtcompile.runtime import InputError, PackageError

        try:
            return fn(*args, **kwargs)
        except (UserError, PackageError, InputError) as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
    return wrapper
