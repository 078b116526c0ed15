"""The one user-error type.

Raise `UserError` for anything the user can fix (a bad file, option, input or machine); the CLI
prints its message and exits 1 without a traceback. Asserts and other exceptions are bugs.
A message says what was wrong, the value, and what to do about it.
"""


class UserError(Exception):
    """A problem with the user's input or machine, with a message that says how to fix it."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  fix: {hint}")
