"""Errors a user can act on.

A :class:`UserError` carries one line naming the problem and the fix; the CLI prints it
and exits with code 2, never a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (paths, names, data, recipe keys).

    Example:
        >>> raise UserError("unknown recipe 'int3': choose one of fp16, bf16, ...")
    """

    exit_code = 2


class Unsupported(UserError):
    """A capability limit: the model cannot take this format, or a runtime cannot run it
    faithfully (an operator a scheme or runtime cannot handle).

    The one outcome for every refusal: alone it is a user error (one line, exit 2); inside
    ``compare`` that format is recorded as ``n/a`` with this reason and the others go on.
    """


UnsupportedModel = Unsupported  # the name the transforms have always raised


def error_line(e: BaseException) -> str:
    """``Type: first line of the message``: how a record or a note names an exception."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
