"""Load a base causal LM and its tokenizer, ready for batched scoring.

One entry point, :func:`load_base_model`, accepts an embedded alias (built once
into the local cache by :mod:`scalabl_pyro.io.assets`), a local ``save_pretrained``
directory, or a Hugging Face hub id, and returns the model in eval mode on the
requested device together with a left-padding tokenizer that has a pad token
(left padding keeps every sequence's last token at position -1, which is what
batched next-token scoring needs).

**Lean loading.** A local safetensors checkpoint (the embedded model, a
``save_pretrained`` directory) is read tensor by tensor with safetensors'
``pread`` backend and converted to the target dtype as it is assigned, so no
float32 copy of the whole model, and no memory-mapped view of the file, is
ever resident: peak RSS while loading stays at the steady state (measured in
``benchmarks/load_memory.py``). Transformers still does the key mapping,
weight tying and device placement (``state_dict=`` of ``from_pretrained``).
On CUDA the weights go straight to the device (``device_map``). Hub ids, and
architectures outside transformers' causal-LM mapping, take the plain
``from_pretrained`` path.

**Quantised base.** ``quantization="4bit"`` (NF4, double quantisation,
compute in the model dtype) or ``"8bit"`` (LLM.int8) loads the frozen base
through bitsandbytes, QLoRA style, and prepares it with peft's
``prepare_model_for_kbit_training`` (norms and embeddings in float32; no
gradient checkpointing unless the trainer asks for it). bitsandbytes is an
optional extra (``pip install 'scalabl-pyro[quantization]'``); a missing
package or a device it cannot quantise on is one clear error.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.io.assets import EMBEDDED_MODELS, ensure_embedded_model
from scalabl_pyro.io.hub_access import hub_endpoint, hub_status
from scalabl_pyro.io.quantization import check_quantization
from scalabl_pyro.utils.logging_utils import quiet_library_calls, release_bitsandbytes_logs

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
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_FILE = "model.safetensors"


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
    quantization: str | None = None,
    progress: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (eval mode, on ``device``) and a left-padding tokenizer with a pad token.

    ``name_or_path`` is an embedded alias (e.g. ``"smollm2-135m"``, fetched and
    converted once), a local directory with ``config.json``, or a hub id
    ``org/name``. ``revision`` applies to hub ids only. A hub id is checked
    with one short probe first (:mod:`scalabl_pyro.io.hub_access`): when the hub
    cannot be reached the cached copy is used, and without one the call fails
    in seconds rather than after the hub client's minute of retries.
    ``quantization`` (``None``, ``"4bit"`` or ``"8bit"``) loads a frozen
    bitsandbytes base (see the module docstring).

    Loading prints nothing: transformers' and the hub's progress bars are off
    unless ``progress`` is true, and the libraries' ``warnings.warn`` calls are
    logged on this module's logger (:func:`~scalabl_pyro.utils.logging_utils.quiet_library_calls`).
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    quant_config = quantization_config(quantization, torch_dtype, torch_device)
    source, is_hub = _resolve_source(str(name_or_path))  # also accepts a Path
    if revision is not None and not is_hub:
        raise ScalaBLError(
            f"revision={revision!r} only applies to hub ids, not {name_or_path!r}; "
            "drop the revision or pass an org/name hub id"
        )
    hub_kwargs: dict[str, object] = {"trust_remote_code": trust_remote_code, "revision": revision}
    if is_hub and _hub_cache_only(source, revision):
        hub_kwargs["local_files_only"] = True
    with quiet_library_calls(logger, progress=progress):
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left", **hub_kwargs)
            model = None
            if not is_hub and quant_config is None:
                model = _load_lean(Path(source), torch_dtype, torch_device, trust_remote_code)
            if model is None:
                extra: dict[str, object] = {}
                if quant_config is not None or torch_device.type != "cpu":
                    extra["device_map"] = {"": str(torch_device)}
                if quant_config is not None:
                    extra["quantization_config"] = quant_config
                model = AutoModelForCausalLM.from_pretrained(
                    source, dtype=torch_dtype, **extra, **hub_kwargs
                )
        except ScalaBLError:
            raise
        except (OSError, ValueError) as exc:
            reason = _first_line(str(exc)).rstrip(".") or type(exc).__name__
            raise ScalaBLError(
                f"could not load model {name_or_path!r}: {reason}; pass an embedded alias "
                f"({_aliases()}), a local directory with config.json, or a reachable hub id"
            ) from exc

    tokenizer.padding_side = "left"
    _record_source(model, source, is_hub)
    _ensure_pad_token(model, tokenizer)
    if quant_config is None:
        model.to(torch_device)
    else:
        from peft import prepare_model_for_kbit_training

        with quiet_library_calls(logger):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.eval()
    logger.info(
        "loaded %s (%s, %s%s)",
        name_or_path,
        torch_dtype,
        torch_device,
        f", {quantization}" if quantization else "",
    )
    return model, tokenizer


def quantization_config(quantization: str | None, dtype: torch.dtype, device: torch.device):
    """A ``BitsAndBytesConfig`` for ``"4bit"`` / ``"8bit"`` (None for None), checked first.

    4-bit is QLoRA's NF4 with double quantisation and ``dtype`` as compute
    dtype; 8-bit is LLM.int8. Raises when bitsandbytes is not installed or
    cannot quantise on ``device`` (one tiny quantisation is tried there).
    """
    check_quantization(quantization)
    if quantization is None:
        return None
    release_bitsandbytes_logs()  # its import-time messages concern the user now
    try:
        import bitsandbytes.functional as bnbf
    except ImportError as exc:
        raise ScalaBLError(
            f"quantization={quantization!r} needs bitsandbytes, which is not installed; "
            "pip install 'scalabl-pyro[quantization]' or set quantization=None"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a broken native library raises anything
        raise ScalaBLError(
            f"quantization={quantization!r}: bitsandbytes failed to import "
            f"({type(exc).__name__}); reinstall it for this platform or set quantization=None"
        ) from exc
    probe = torch.randn(64, 64, device=device, dtype=dtype)
    try:
        if quantization == "4bit":
            bnbf.quantize_4bit(probe, quant_type="nf4")
        else:
            bnbf.int8_vectorwise_quant(probe.to(torch.float16))
    except Exception as exc:  # noqa: BLE001 - unsupported devices raise various errors
        reason = _first_line(str(exc)).rstrip(".") or type(exc).__name__
        raise ScalaBLError(
            f"quantization={quantization!r} is not supported on device {str(device)!r} by the "
            f"installed bitsandbytes ({reason}); use a CUDA device, upgrade bitsandbytes "
            "(>= 0.49 quantises on the CPU) or set quantization=None"
        ) from exc
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _safetensors_files(source: Path) -> list[Path] | None:
    """The safetensors shards of a local checkpoint directory (None if it has none)."""
    index = source / _SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return None
        return [source / name for name in sorted(set(weight_map.values()))]
    single = source / _SAFETENSORS_FILE
    return [single] if single.is_file() else None


def _load_lean(
    source: Path, dtype: torch.dtype, device: torch.device, trust_remote_code: bool
) -> PreTrainedModel | None:
    """Load a local safetensors checkpoint without a whole-model copy in another dtype.

    Every tensor is handed to transformers as a lazy slice of a ``pread``
    safetensors handle (no memory map), so it is read, converted to ``dtype``
    and placed one tensor at a time. Returns None when this path does not
    apply (no safetensors files, an architecture outside the causal-LM
    mapping, a safetensors without the ``pread`` backend); the caller then
    uses plain ``from_pretrained``.
    """
    files = _safetensors_files(source)
    if files is None:
        return None
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    model_cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_cls is None:
        return None
    try:
        handles = [safe_open(str(f), framework="pt", backend="pread") for f in files]
    except TypeError:  # safetensors < 0.7 has no backend argument
        return None
    try:
        state = {k: h.get_slice(k) for h in handles for k in h.keys()}  # noqa: SIM118
        extra: dict[str, object] = {}
        if device.type != "cpu":
            extra["device_map"] = {"": str(device)}
        model = model_cls.from_pretrained(
            None, config=config, state_dict=state, dtype=dtype, **extra
        )
    finally:
        state = {}
        for h in handles:
            h.__exit__(None, None, None)
    if (source / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(source)
    return model


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


def _record_source(model: PreTrainedModel, source: str, is_hub: bool) -> None:
    """Name the model's origin in ``name_or_path``: the hub id, or the absolute local path.

    peft copies ``name_or_path`` into an adapter's ``base_model_name_or_path``
    (what ``AutoPeftModelForCausalLM`` loads). The lean path builds the model
    from a state dict, which leaves the name as the string ``"None"``, and a
    relative path would only work from the same working directory.
    """
    name = source if is_hub else str(Path(source).resolve())
    model.config.name_or_path = name
    model.name_or_path = name


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
