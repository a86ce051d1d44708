"""The errors that mean "what you gave cannot be used", and one-line error text.

Every check of user input (options, images, paths, weights, configuration files,
environment variables) raises a :class:`UserError`. The command line prints those (and
``OSError``) as one line with exit status 2; any other exception is a bug and keeps its
traceback. In Python they are ordinary ``ValueError`` / ``TypeError`` subclasses.
"""
from __future__ import annotations

__all__ = ['UserError', 'UserTypeError', 'one_line', 'error_text']


class UserError(ValueError):
    """A value given by the caller (argument, option, file, environment variable) cannot be used;
    the message says what was given and what is expected."""


class UserTypeError(UserError, TypeError):
    """A value of the wrong type was given."""


def one_line(text: object) -> str:
    """``str(text)`` on one line: runs of whitespace, newlines included, become one space."""
    return ' '.join(str(text).split())


def error_text(error: BaseException) -> str:
    """``'TypeName: message'`` on one line."""
    return f'{type(error).__name__}: {one_line(error)}'
