"""The suite's own "you asked for something that cannot work" error, for commands that have no
more specific type; :mod:`harness.cli` prints its message in one line and exits with status 2."""

from __future__ import annotations


class UserError(ValueError):
    """A request that cannot work as given; the message names the fix."""
