"""Errors meant for the user: each carries a one-line message naming the file, line or key."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, data files, command line). Printed as one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class DataError(UserError, ValueError):
    """A dataset file or folder that cannot be used as given."""
