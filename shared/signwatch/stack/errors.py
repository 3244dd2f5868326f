"""The one error type of `signwatch.stack`: its message is meant for a person, never a traceback."""

from __future__ import annotations


class StackError(RuntimeError):
    """Something the user can act on: a missing tool, a busy port, a server that did not answer."""
