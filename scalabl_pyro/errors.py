"""User-facing errors.

Every problem caused by the caller's input (a bad name, a missing field, an
unreachable registry with an empty cache) is raised as :class:`ScalaBLError`
with a one-line message that names the problem and the fix. The CLI turns
these into ``error: ...`` on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations


class ScalaBLError(ValueError):
    """A problem with the caller's input or environment, with a one-line fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # keep it to one line
