"""One cell (method, data set, seed): train, predict, and save it atomically; read it back.

A cell is ``cells/<spec>__<task>__seed<k>.json`` (settings, metrics, history)
beside a ``.npz`` of the per-sample log-probabilities (S x N x C), labels and
class masks of every split, so any metric can be recomputed later. A cell whose
files do not read back whole counts as not finished.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.experiments.benchmark.spec import BenchmarkConfig, MethodSpec
from scalabl_pyro.experiments.benchmark.splits import task_splits
from scalabl_pyro.utils.atomic import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)


CELL_DIR = "cells"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def cell_path(root: Path, spec: str, task: str, seed: int) -> Path:
    """Where one trained cell's JSON lives (its arrays sit beside it as ``.npz``)."""
    return root / CELL_DIR / f"{_slug(spec)}__{task}__seed{seed}.json"


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def load_cell(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A finished cell: its JSON and its arrays (``<split>/slp``, ``/labels``, ``/mask``).

    A damaged cell (:func:`cell_damage`) is one :class:`ScalaBLError` line.
    """
    try:
        return _read_cell(path)
    except Exception as e:  # noqa: BLE001 - json, zip, zlib, numpy: all say the cell is damaged
        raise ScalaBLError(
            f"cell {path.parent.name}/{path.name} is damaged ({_why(e)}); it counts as not "
            "finished: run scalabl benchmark without --table-only to train it again"
        ) from None


def _read_cell(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or "metrics" not in meta:
        raise ValueError("its JSON is not a finished cell's")
    with np.load(path.with_suffix(".npz")) as z:
        arrays = {k: z[k] for k in z.files}  # reads (and CRC-checks) every array
    return meta, arrays


def _why(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:120] if text else type(e).__name__


def cell_damage(path: Path) -> str | None:
    """Why the saved cell at ``path`` cannot be used (truncated JSON or .npz), or None.

    A cell is finished when its JSON and its arrays both read back whole; one
    that does not counts as not finished and is trained again.
    """
    if not path.is_file():
        return None
    if not path.with_suffix(".npz").is_file():
        return f"{path.with_suffix('.npz').name} is missing"
    try:
        _read_cell(path)
    except Exception as e:  # noqa: BLE001
        return _why(e)
    return None


def _bma_log_probs(slp: np.ndarray) -> np.ndarray:
    """log of the probability average over samples, (N, C)."""
    m = slp.max(axis=0)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return m + np.log(np.exp(slp - m).mean(axis=0))


def split_metrics(slp: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """ACC, ECE, NLL, Brier, AURC and mean mutual information from (S, N, C) log-probs."""
    from scalabl_pyro.evaluation.metrics import (
        aurc,
        classification_metrics,
        uncertainty_decomposition,
    )

    probs = np.exp(_bma_log_probs(slp))
    out = classification_metrics(probs, labels, n_bins=n_bins)
    out["aurc"] = aurc(probs, labels)
    out["mutual_information"] = float(uncertainty_decomposition(np.exp(slp)).mean()["epistemic"])
    return out


def _check_cell_config(path: Path, spec: MethodSpec, seed: int, cfg: BenchmarkConfig) -> None:
    """Refuse to reuse a finished cell whose model settings the spec no longer resolves to.

    A cell is named by its spec; when a library default changes (as
    ``normalization`` did), the same spec means another model, and skipping the
    cell would put the old model's numbers under the new meaning.
    """
    from scalabl_pyro.config import ScalaBLConfig

    resolved = ScalaBLConfig(base_model=cfg.model, dtype=cfg.dtype, seed=seed, **spec.model)
    want = resolved.to_dict()
    saved = dict(json.loads(path.read_text()).get("model_config", {}))
    if saved.get("method") == "scalabl" and saved.get("guide") == "mle":
        saved["method"] = "mle"  # how plain LoRA was written before ScalaBLConfig.method existed
    unused = {"device"} | (set() if resolved.uses_init_scale else {"init_scale"})
    differ = sorted(
        k for k in set(want) | set(saved) if k not in unused and saved.get(k) != want.get(k)
    )
    if differ:
        shown = ", ".join(f"{k}={saved.get(k)!r} (now {want.get(k)!r})" for k in differ[:3])
        raise ScalaBLError(
            f"finished cell {path.name} was trained with {shown}, which the spec "
            f"{spec.trained!r} no longer means; name the setting in the spec "
            f"(e.g. {spec.trained.split('[')[0]}[{differ[0]}={saved.get(differ[0])}]) or use "
            "a new --output"
        )


def run_cell(spec: MethodSpec, task: str, seed: int, cfg: BenchmarkConfig) -> Path:
    """Train and predict one cell; returns its JSON path (skips a finished cell)."""
    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.inference.train import TrainConfig

    root = Path(cfg.output)
    path = cell_path(root, spec.trained, task, seed)
    if path.is_file() and cell_damage(path) is None:
        _check_cell_config(path, spec, seed, cfg)
        log.info("skip finished cell %s", path.name)
        return path
    train, select, report = task_splits(task, cfg)
    t0 = time.perf_counter()
    sbl = ScalaBL.from_base(
        base_model=cfg.model, dtype=cfg.dtype, device=cfg.device, seed=seed, **spec.model
    )
    tcfg = TrainConfig(
        **{
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "seed": seed,
            "progress": cfg.progress,
            "eval_every": cfg.eval_every,
            **spec.train,
        }
    )
    curve = select.subset(cfg.curve_limit, seed=cfg.data_seed) if cfg.eval_every else None
    history = sbl.fit(train, tcfg, validation=curve, eval_samples=min(spec.samples, 4))
    t_train = time.perf_counter() - t0
    arrays: dict[str, np.ndarray] = {}
    splits = {"selection": select, **{f"report/{k}": v for k, v in report.items()}}
    metrics, seconds = {}, {}
    for key, data in splits.items():
        t1 = time.perf_counter()
        pred = sbl.predict(data, num_samples=spec.samples, seed=seed, progress=cfg.progress)
        seconds[key] = time.perf_counter() - t1
        slp = pred.sample_log_probs.astype(np.float32)
        arrays[f"{key}/slp"], arrays[f"{key}/labels"] = slp, pred.labels
        arrays[f"{key}/mask"] = pred.class_mask
        metrics[key] = split_metrics(pred.sample_log_probs, pred.labels, cfg.n_bins)
        metrics[key]["n"] = len(data)
    meta = {
        "spec": spec.trained,
        "task": task,
        "seed": seed,
        "settings": cfg.fingerprint(),
        "model_config": sbl.config.to_dict(),
        "train_config": dataclasses.asdict(tcfg),
        "samples": spec.samples,
        "extra_parameters": extra_parameters(sbl),
        "train_seconds": t_train,
        "predict_seconds": seconds,
        "splits": {k: f"{d.name}/{d.split}" for k, d in splits.items()},
        "metrics": metrics,
        "history": _history_summary(history),
        "posterior": _posterior_summary(sbl),
    }
    _save_arrays(path.with_suffix(".npz"), arrays)
    write_text_atomic(path, json.dumps(meta, indent=1, default=_json_default))
    return path


def extra_parameters(sbl: Any) -> int:
    """Parameters a method adds over plain LoRA (the library's own count where it has one)."""
    return int(sbl.num_extra_parameters)


def _history_summary(history: Any) -> dict[str, Any]:
    steps = history.steps
    return {
        "nll": [s.nll for s in steps],
        "kl": [s.kl for s in steps],
        "validation": history.validation,
    }


def _posterior_summary(sbl: Any) -> dict[str, float] | None:
    if sbl.config.guide in ("mle", "delta") or getattr(sbl, "method", "scalabl") != "scalabl":
        return None
    from scalabl_pyro.inference.predict import posterior_spread

    return {k: float(v) for k, v in posterior_spread(sbl.model, sbl.guide).items()}


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
