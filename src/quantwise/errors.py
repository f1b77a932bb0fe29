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


class UnsupportedModel(UserError):
    """The model cannot take this format (an operator a scheme or runtime cannot handle).

    Alone it is a user error (exit 2); inside ``compare`` that format is marked not applicable
    and the others go on.
    """
