"""Load a base causal LM and its tokenizer, ready for batched scoring.

One entry point, :func:`load_base_model`, accepts an embedded alias (built once
into the local cache by :mod:`scalabl_pyro.assets`), a local ``save_pretrained``
directory, or a Hugging Face hub id, and returns the model in eval mode on the
requested device together with a left-padding tokenizer that has a pad token
(left padding keeps every sequence's last token at position -1, which is what
batched next-token scoring needs).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from scalabl_pyro.assets import EMBEDDED_MODELS, ensure_embedded_model
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.hub_access import hub_endpoint, hub_status

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FALLBACK_PAD = "<|pad|>"


def _aliases() -> str:
    return ", ".join(sorted(EMBEDDED_MODELS))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` (CUDA if available, else CPU) or a device spec into a torch.device."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ScalaBLError(
                f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'"
            ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ScalaBLError(
            f"device {str(resolved)!r} requested but CUDA is not available; "
            "use device='cpu' or device='auto'"
        )
    return resolved


def resolve_dtype(
    dtype: str | torch.dtype = "auto", device: str | torch.device = "auto"
) -> torch.dtype:
    """Turn ``"auto"`` (bfloat16 on CUDA, float32 elsewhere) or a dtype name into a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ScalaBLError(
                f"dtype {dtype} is not a floating-point type; use float32, bfloat16 or float16"
            )
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        return torch.bfloat16 if _device_type(device) == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ScalaBLError(
            f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'"
        )
    return _DTYPES[name]


def _device_type(device: str | torch.device) -> str:
    """The device type ("cuda", "cpu", ...) without checking that it is available."""
    if isinstance(device, torch.device):
        return device.type
    if device == "auto":
        return resolve_device("auto").type
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError) as exc:
        raise ScalaBLError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'"
        ) from exc


def load_base_model(
    name_or_path: str = "smollm2-135m",
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (eval mode, on ``device``) and a left-padding tokenizer with a pad token.

    ``name_or_path`` is an embedded alias (e.g. ``"smollm2-135m"``, fetched and
    converted once), a local directory with ``config.json``, or a hub id
    ``org/name``. ``revision`` applies to hub ids only. A hub id is checked
    with one short probe first (:mod:`scalabl_pyro.hub_access`): when the hub
    cannot be reached the cached copy is used, and without one the call fails
    in seconds rather than after the hub client's minute of retries.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source, is_hub = _resolve_source(str(name_or_path))  # also accepts a Path
    if revision is not None and not is_hub:
        raise ScalaBLError(
            f"revision={revision!r} only applies to hub ids, not {name_or_path!r}; "
            "drop the revision or pass an org/name hub id"
        )
    hub_kwargs: dict[str, object] = {"trust_remote_code": trust_remote_code, "revision": revision}
    if is_hub and _hub_cache_only(source, revision):
        hub_kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left", **hub_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **hub_kwargs)
    except ScalaBLError:
        raise
    except (OSError, ValueError) as exc:
        reason = _first_line(str(exc)).rstrip(".") or type(exc).__name__
        raise ScalaBLError(
            f"could not load model {name_or_path!r}: {reason}; pass an embedded alias "
            f"({_aliases()}), a local directory with config.json, or a reachable hub id"
        ) from exc

    tokenizer.padding_side = "left"
    _ensure_pad_token(model, tokenizer)
    model.eval()
    model.to(torch_device)
    logger.info("loaded %s (%s, %s)", name_or_path, torch_dtype, torch_device)
    return model, tokenizer


def _resolve_source(name_or_path: str) -> tuple[str, bool]:
    """Map the user's name to what ``from_pretrained`` takes, and whether it is a hub id."""
    if name_or_path in EMBEDDED_MODELS:
        return str(ensure_embedded_model(name_or_path)), False
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ScalaBLError(
                f"directory {name_or_path!r} has no config.json; pass a directory written by "
                f"save_pretrained, an embedded alias ({_aliases()}), or a hub id org/name"
            )
        return str(path), False
    if path.exists():
        raise ScalaBLError(
            f"{name_or_path!r} is a file, not a model directory; pass the directory that "
            f"contains config.json, an embedded alias ({_aliases()}), or a hub id org/name"
        )
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "~")):
        return name_or_path, True
    raise ScalaBLError(
        f"unknown model {name_or_path!r}: not an embedded alias, an existing directory, "
        f"or a hub id of the form org/name; embedded aliases: {_aliases()}"
    )


def _hub_cache_only(repo_id: str, revision: str | None) -> bool:
    """Whether hub id ``repo_id`` must be read from the local cache (the hub is unreachable).

    Raises when the hub is unreachable and nothing is cached. In offline mode
    (``HF_HUB_OFFLINE=1``) the hub libraries read only their cache themselves.
    """
    status = hub_status()
    if status in ("online", "offline"):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - a cache we cannot read is a cache we do not have
        cached = None
    if isinstance(cached, str):
        logger.info("the hub is unreachable (%s); using the cached copy of %s", status, repo_id)
        return True
    raise ScalaBLError(
        f"could not load model {repo_id!r}: the Hugging Face hub ({hub_endpoint()}) cannot be "
        f"reached ({status}) and the model is not in the local cache; check the network or "
        f"HF_ENDPOINT, or pass an embedded alias ({_aliases()}) or a local directory with "
        "config.json"
    )


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token (eos, else unk, else a new one) and tell the model."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": _FALLBACK_PAD})
            logger.info("tokenizer had no pad/eos/unk token; added %s", _FALLBACK_PAD)
    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def _first_line(text: str) -> str:
    """The first non-empty line of an exception message (transformers' can be long)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""
