"""Errors meant for the user: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input or a state the user must fix: shown as one line, exit code 2, no traceback."""
