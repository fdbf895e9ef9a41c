"""Can the Hugging Face hub be reached? One short probe instead of a minute of retries.

``huggingface_hub`` retries a failed request five times with back-off (about
25 s per file), and a model load asks for several files, so an unreachable
hub id used to take about a minute to fail. Before any hub download the
library asks :func:`hub_status` once:

* ``"offline"``: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set; the
  libraries read only their local cache and fail fast on their own;
* ``"online"``: one ``HEAD`` request to the hub endpoint (``HF_ENDPOINT``),
  made with ``huggingface_hub.get_session()`` so proxies and custom clients
  apply, answered within :data:`PROBE_TIMEOUT_S` seconds (any HTTP status
  counts: the server answered);
* otherwise the reason the probe failed (a one-line string).

Callers then read a cached copy (``local_files_only=True``) or raise one clear
error. Nothing is changed process-wide.
"""

from __future__ import annotations

PROBE_TIMEOUT_S = 5.0
"""Seconds the reachability probe waits for the hub to answer."""


def hub_endpoint() -> str:
    """The hub URL that ``huggingface_hub`` talks to (``HF_ENDPOINT`` or huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_offline() -> bool:
    """Whether the user asked for offline mode (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def probe_hub(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` if the hub endpoint answers within ``timeout`` seconds, else why not."""
    from huggingface_hub import get_session

    try:
        get_session().head(hub_endpoint(), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - every failure means "not reachable now"
        detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return None


def hub_status(timeout: float = PROBE_TIMEOUT_S) -> str:
    """``"offline"``, ``"online"``, or the one-line reason the hub cannot be reached."""
    if hub_offline():
        return "offline"
    reason = probe_hub(timeout)
    return "online" if reason is None else reason
