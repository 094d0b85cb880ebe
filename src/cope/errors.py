"""Errors the user can act on. The CLI prints them as one line and exits with code 2."""


class CopeInputError(Exception):
    """Bad input or bad usage: a missing, unreadable or unsupported video, an invalid option.

    The message names the file (when there is one) and the reason, in one line.
    """
