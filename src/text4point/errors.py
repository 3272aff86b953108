"""One error type for bad input: the CLI prints its message as one line and exits with status 2."""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad input or configuration.

    The message is a single line naming the file (or key), the field and what was expected; ``exit_code`` is the
    CLI's exit status for it.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def bad(path: str | os.PathLike | None, field: str, expected: str, got: object = None) -> InputError:
    """Build the project's standard one-line message: ``<file>: <field>: expected <x>[, got <y>]``."""
    where = f"{os.fspath(path)}: " if path is not None else ""
    tail = "" if got is None else f", got {got!r}"
    return InputError(f"{where}{field}: expected {expected}{tail}")
