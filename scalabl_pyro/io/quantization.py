"""The quantisations of a frozen base (``ScalaBLConfig.quantization``); checked without torch."""

from __future__ import annotations

from scalabl_pyro.errors import ScalaBLError

QUANTIZATIONS = ("4bit", "8bit")
"""4-bit NF4 (QLoRA) or 8-bit LLM.int8 weights, through bitsandbytes (:mod:`.loading`)."""


def check_quantization(quantization: str | None) -> None:
    """Refuse an unknown quantization name (the config calls this)."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ScalaBLError(f"unknown quantization {quantization!r}; use None, '4bit' or '8bit'")
