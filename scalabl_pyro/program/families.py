"""The names of the guide families (:mod:`scalabl_pyro.program.guides` builds them).

Kept apart from the guides so that validating a config imports no torch or Pyro.
"""

from __future__ import annotations

from scalabl_pyro.errors import ScalaBLError

GUIDE_FAMILIES = (
    "mean_field",
    "log_mean_field",
    "full_rank",
    "low_rank",
    "block",
    "delta",
    "mle",
)

#: Families with a diagonal Gaussian per site (analytic KL, closed-form reverse KL).
MEAN_FIELD_FAMILIES = ("mean_field", "log_mean_field")


def check_family(family: str) -> str:
    """Validate a guide-family name (clear error listing the known ones)."""
    if family not in GUIDE_FAMILIES:
        raise ScalaBLError(
            f"unknown guide family {family!r}; choose one of {', '.join(GUIDE_FAMILIES)}"
        )
    return family
