"""Methods x data sets x seeds -> one table, mean +- std over seeds; resumable.

A *cell* is one (method, data set, seed): build the model, train it on a
fixed training subset, predict the selection split and every report split,
and save everything needed to recompute any metric later (the per-sample
log-probabilities, S x N x C, as ``.npz``) plus a JSON of metrics. A cell is
written atomically once it has finished, and a re-run skips it, so a grid too
large for one sitting finishes over several runs. The table is rebuilt from
the saved cells every time.

Methods are named by a spec string ``name[key=value,...][+ts]``:

- ``name`` is one of :data:`METHODS` (``mle``, ``scalabl``, ``full_rank``...);
- ``[key=value,...]`` overrides any field of :class:`~scalabl_pyro.config.ScalaBLConfig`
  or :class:`~scalabl_pyro.inference.train.TrainConfig` (``scalabl[kl_weight=10,init_scale=0.2]``),
  plus ``samples`` (BMA samples at prediction);
- ``+ts`` adds temperature scaling, fitted post hoc on the selection split
  (the method's own cell is reused: no extra training).

Splits (the protocol keeps test data out of every choice):

- *in-distribution*: train on ``train``; the selection split is
  ``validation``; the report split is ``test`` where the data set has one.
  Where it has none (BoolQ, WinoGrande) the validation split is cut into two
  disjoint halves with a fixed seed: selection and report.
- *ood* (the paper's protocol): train on OpenBookQA; report OBQA test and the
  shifted sets ARC-C, ARC-E, MMLU college chemistry and physics; OOD-detection
  AUROC of each shifted set against the OBQA test set, from max probability,
  predictive entropy and mutual information.

Hyperparameters are the spec's; whatever was chosen on the selection split is
recorded with the table (``selection`` in ``benchmark.json``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.methods import benchmark_entries
from scalabl_pyro.utils.atomic import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

#: Base method -> (ScalaBLConfig overrides, TrainConfig overrides, BMA samples): each method
#: (and the official recipe) states its entries (``Method.benchmark`` in ``scalabl_pyro.methods``).
METHODS: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    name: entry for name, (entry, _) in benchmark_entries().items()
}

#: The OOD protocol's training set, in-distribution report set and shifted sets.
OOD_TRAIN = "openbookqa"
OOD_SHIFTED = ("arc_challenge", "arc_easy", "mmlu_college_chemistry", "mmlu_college_physics")

CELL_DIR = "cells"
SETTINGS_FILE = "benchmark.json"
_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?:\[(?P<args>[^\]]*)\])?(?P<ts>\+ts)?$")


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method spec: base name, overrides, BMA samples, post-hoc TS."""

    spec: str
    name: str
    model: dict[str, Any]
    train: dict[str, Any]
    samples: int
    temperature: bool

    @property
    def trained(self) -> str:
        """The spec of the trained cell (without ``+ts``): TS reuses its predictions."""
        return self.spec[:-3] if self.temperature else self.spec


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_method(spec: str) -> MethodSpec:
    """Parse ``name[key=value,...][+ts]``; unknown names or fields are a one-line error."""
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.inference.train import TrainConfig

    m = _SPEC.match(spec.strip())
    if not m:
        raise ScalaBLError(
            f"method spec {spec!r} is malformed; write name[key=value,...] with an optional "
            "+ts, e.g. scalabl[kl_weight=10]+ts"
        )
    name = m["name"]
    if name not in METHODS:
        raise ScalaBLError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    model, train, samples = dict(METHODS[name][0]), dict(METHODS[name][1]), METHODS[name][2]
    model_fields = {f.name for f in dataclasses.fields(ScalaBLConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in filter(None, (m["args"] or "").split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ScalaBLError(f"method spec {spec!r}: {item!r} is not key=value")
        value = _coerce(raw.strip())
        if key == "samples":
            if not isinstance(value, int) or value < 1:
                raise ScalaBLError(f"method spec {spec!r}: samples must be an integer >= 1")
            samples = value
        elif key in model_fields:
            model[key] = value
        elif key in train_fields:
            train[key] = value
        else:
            raise ScalaBLError(
                f"method spec {spec!r}: {key!r} is neither a ScalaBLConfig nor a TrainConfig "
                "field (nor 'samples')"
            )
    if "recipe" in model:  # ScalaBLConfig/TrainConfig.official() refuse what contradicts it
        del model["recipe"], train["recipe"]
        official = ScalaBLConfig.official(**model)  # checks the overrides
        fixed = (*ScalaBLConfig.OFFICIAL, "alpha", "target_modules")
        model = {**model, **{k: getattr(official, k) for k in fixed}}
        TrainConfig.official(**train)  # checks the overrides
        train = {**TrainConfig.OFFICIAL, **train}
    return MethodSpec(spec.strip(), name, model, train, samples, bool(m["ts"]))


@dataclass
class BenchmarkConfig:
    """One grid: what is trained, on what, how long, and where the cells go."""

    methods: Sequence[str]
    tasks: Sequence[str] = ("arc_easy",)
    seeds: Sequence[int] = (0,)
    protocol: str = "in_distribution"  # | "ood"
    output: str = "benchmark_output"
    model: str = "smollm2-135m"
    dtype: str = "auto"
    device: str = "auto"
    train_limit: int | None = 256
    steps: int = 256
    batch_size: int = 4
    lr: float = 1e-3
    select_limit: int | None = 200
    eval_limit: int | None = 500
    data_seed: int = 0
    eval_every: int = 0
    curve_limit: int = 100
    n_bins: int = 15
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in ("in_distribution", "ood"):
            raise ScalaBLError(
                f"unknown protocol {self.protocol!r}; use 'in_distribution' or 'ood'"
            )
        if not self.methods:
            raise ScalaBLError("no methods given; name at least one, e.g. --methods mle,scalabl")
        if not self.seeds:
            raise ScalaBLError("no seeds given; e.g. --seeds 0,1,2")
        self.specs = [parse_method(s) for s in self.methods]
        if self.protocol == "ood":
            self.tasks = (OOD_TRAIN,)

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change a cell's result; a re-run into the same folder must match."""
        keys = ("protocol", "model", "dtype", "train_limit", "steps", "batch_size", "lr")
        keys += ("select_limit", "eval_limit", "data_seed", "eval_every", "curve_limit")
        return {k: getattr(self, k) for k in keys}


# ------------------------------------------------------------------ splits
def _halves(data, first: int | None, second: int | None, seed: int):
    """Two disjoint random subsets of one split (selection, report)."""
    import random

    idx = list(range(len(data)))
    random.Random(seed).shuffle(idx)
    half = len(idx) // 2
    a, b = sorted(idx[:half]), sorted(idx[half:])
    a, b = a[: first or len(a)], b[: second or len(b)]
    pick = lambda ids, tag: dataclasses.replace(  # noqa: E731
        data, split=f"{data.split}[{tag}]", examples=[data.examples[i] for i in ids]
    )
    return pick(a, "selection half"), pick(b, "report half")


def task_splits(task: str, cfg: BenchmarkConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(train, selection, {report name: data}) for one data set under the protocol."""
    from scalabl_pyro.data.tasks import available_splits, load_task

    train = load_task(task, "train", limit=cfg.train_limit, seed=cfg.data_seed)
    splits = available_splits(task, "embedded")
    if "test" in splits:
        select = load_task(task, "validation", limit=cfg.select_limit, seed=cfg.data_seed)
        report = {task: load_task(task, "test", limit=cfg.eval_limit, seed=cfg.data_seed)}
    else:
        val = load_task(task, "validation")
        select, held = _halves(val, cfg.select_limit, cfg.eval_limit, cfg.data_seed)
        report = {task: held}
    if cfg.protocol == "ood":
        for shifted in OOD_SHIFTED:
            split = "test" if "test" in available_splits(shifted, "embedded") else "validation"
            report[shifted] = load_task(shifted, split, limit=cfg.eval_limit, seed=cfg.data_seed)
    return train, select, report


# ------------------------------------------------------------------- cells
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


# ------------------------------------------------------------------- table
def _temperature_scaled(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """Fit T on the selection split's draws; temper every split's draws with it.

    Each draw's log-probabilities are divided by T before the average
    (:func:`~scalabl_pyro.inference.temperature.fit_bma_temperature`), so a Bayesian
    method keeps its draws and its MI after scaling.
    """
    from scalabl_pyro.inference.temperature import fit_bma_temperature, tempered_draws

    temp = fit_bma_temperature(
        arrays["selection/slp"].astype(np.float64), arrays["selection/labels"]
    )
    out = dict(arrays)
    for key in {k.rsplit("/", 1)[0] for k in arrays}:
        out[f"{key}/slp"] = tempered_draws(arrays[f"{key}/slp"].astype(np.float64), temp)
    return out, temp


def cell_rows(
    spec: MethodSpec, meta: dict, arrays: dict[str, np.ndarray], n_bins: int
) -> list[dict]:
    """One row per report split of one cell (temperature-scaled when the spec says +ts)."""
    from scalabl_pyro.evaluation.metrics import ood_detection, ood_scores

    temp = None
    if spec.temperature:
        arrays, temp = _temperature_scaled(arrays)
    reports = sorted(
        k.split("/")[1] for k in arrays if k.startswith("report/") and k.endswith("/slp")
    )
    rows = []
    in_task = meta["task"]
    for name in reports:
        slp = arrays[f"report/{name}/slp"].astype(np.float64)
        row = {
            "method": spec.spec,
            "task": in_task,
            "eval": name,
            "seed": meta["seed"],
            **split_metrics(slp, arrays[f"report/{name}/labels"], n_bins),
            "extra_parameters": meta["extra_parameters"],
            "train_seconds": meta["train_seconds"],
        }
        if temp is not None:
            row["temperature"] = temp
        if name != in_task and f"report/{in_task}/slp" in arrays:
            s_in = ood_scores(np.exp(arrays[f"report/{in_task}/slp"].astype(np.float64)))
            s_out = ood_scores(np.exp(slp))
            for score in ("max_prob", "entropy", "mutual_information"):
                if score in s_in:
                    row[f"auroc_{score}"] = ood_detection(s_in[score], s_out[score]).auroc
        rows.append(row)
    return rows


#: Metrics summarised in the table (mean +- std over seeds), in this order.
TABLE_METRICS = ("acc", "ece", "nll", "brier", "aurc", "mutual_information")
OOD_METRICS = ("auroc_max_prob", "auroc_entropy", "auroc_mutual_information")


def summarise(rows: list[dict]) -> list[dict]:
    """Group rows by (method, task, eval) and take mean and std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["task"], r["eval"]), []).append(r)
    out = []
    for (method, task, ev), rs in groups.items():
        s = {"method": method, "task": task, "eval": ev, "seeds": len(rs)}
        for k in TABLE_METRICS + OOD_METRICS + ("train_seconds",):
            vals = [r[k] for r in rs if k in r and r[k] is not None]
            if vals:
                s[k] = float(np.mean(vals))
                s[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        s["extra_parameters"] = rs[0]["extra_parameters"]
        out.append(s)
    return out


def _pm(row: dict, key: str, scale: float = 1.0, digits: int = 3) -> str:
    if key not in row:
        return "–"
    m, sd = row[key] * scale, row.get(f"{key}_std", 0.0) * scale
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if row["seeds"] > 1 else f"{m:.{digits}f}"


def markdown_table(summary: list[dict]) -> str:
    """The summary as a markdown table (ECE in %, mean ± std over seeds)."""
    ood = any(k in r for r in summary for k in OOD_METRICS)
    head = ["method", "train", "eval", "seeds", "ACC", "ECE %", "NLL", "Brier", "AURC", "MI"]
    head += ["AUROC (MI)", "AUROC (max p)"] if ood else []
    head += ["extra params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [r["method"], r["task"], r["eval"], str(r["seeds"]), _pm(r, "acc")]
        cells += [_pm(r, "ece", 100, 1), _pm(r, "nll"), _pm(r, "brier"), _pm(r, "aurc")]
        cells += [_pm(r, "mutual_information", 1, 4)]
        if ood:
            cells += [_pm(r, "auroc_mutual_information"), _pm(r, "auroc_max_prob")]
        cells += [f"{r['extra_parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(root: Path, cfg: BenchmarkConfig, rows: list[dict], summary: list[dict]) -> None:
    """``table.md``, ``table.csv`` (per seed) and ``table.json`` (both), each atomically."""
    write_text_atomic(root / "table.md", markdown_table(summary))
    buf = io.StringIO()
    keys = sorted(
        {k for r in rows for k in r}, key=lambda k: (k not in ("method", "task", "eval", "seed"), k)
    )
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(root / "table.csv", buf.getvalue())
    doc = {
        "settings": cfg.fingerprint(),
        "methods": list(cfg.methods),
        "summary": summary,
        "rows": rows,
    }
    write_text_atomic(root / "table.json", json.dumps(doc, indent=1, default=_json_default))


def machine() -> dict[str, Any]:
    """Where the benchmark ran."""
    import torch

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def _check_settings(root: Path, cfg: BenchmarkConfig) -> None:
    path = root / SETTINGS_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text()).get("settings", {})
        except (ValueError, AttributeError) as e:  # truncated, not UTF-8, not an object
            raise ScalaBLError(
                f"{path} is damaged ({_why(e)}), and it records the settings the cells in {root} "
                "were made with; restore it, or use a new --output"
            ) from None
        if saved != cfg.fingerprint():
            diff = sorted(
                k
                for k in set(saved) | set(cfg.fingerprint())
                if saved.get(k) != cfg.fingerprint().get(k)
            )
            raise ScalaBLError(
                f"{root} holds cells made with other settings ({', '.join(diff)}); use another "
                "--output, or the same settings to resume"
            )
    elif root.exists() and any(p for p in root.iterdir() if p.name != CELL_DIR):
        raise ScalaBLError(
            f"{root} exists and is not a benchmark folder; choose a new or empty --output"
        )


def run_benchmark(cfg: BenchmarkConfig, on_cell: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the whole grid, then rebuild and write the table; returns it."""
    root = Path(cfg.output)
    _check_settings(root, cfg)
    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "settings": cfg.fingerprint(),
        "methods": list(cfg.methods),
        "tasks": list(cfg.tasks),
        "seeds": list(cfg.seeds),
        "machine": machine(),
        **cfg.extra,
    }
    write_text_atomic(root / SETTINGS_FILE, json.dumps(settings, indent=1, default=_json_default))
    trained = list(dict.fromkeys(s.trained for s in cfg.specs))
    for task in cfg.tasks:
        for seed in cfg.seeds:
            for spec_str in trained:
                spec = parse_method(spec_str)
                path = cell_path(root, spec.trained, task, seed)
                damage = cell_damage(path)
                done = path.is_file() and damage is None
                msg = f"{'skip' if done else 'run'} {spec.trained} / {task} / seed {seed}"
                if damage is not None:
                    msg += f" (its saved cell is damaged: {damage}; training it again)"
                if on_cell:
                    on_cell(msg)
                run_cell(spec, task, seed, cfg)
    return build_table(cfg)


def rebuild_table(cfg: BenchmarkConfig) -> dict:
    """The table of the cells already finished in ``cfg.output``, training none.

    For a grid that finishes over several sittings: look at what is done. The
    folder must hold cells made with ``cfg``'s settings, and each finished cell
    must still be what its spec means (see :func:`_check_cell_config`).
    """
    root = Path(cfg.output)
    if not (root / SETTINGS_FILE).is_file():
        raise ScalaBLError(
            f"{root} is not a benchmark folder (no {SETTINGS_FILE}); run the grid first, "
            "without --table-only"
        )
    _check_settings(root, cfg)
    for trained in dict.fromkeys(s.trained for s in cfg.specs):
        spec = parse_method(trained)
        for task in cfg.tasks:
            for seed in cfg.seeds:
                path = cell_path(root, spec.trained, task, seed)
                if path.is_file():
                    load_cell(path)  # a damaged cell: one line, with the fix
                    _check_cell_config(path, spec, seed, cfg)
    return build_table(cfg)


def build_table(cfg: BenchmarkConfig) -> dict:
    """Rebuild the table from the finished cells of ``cfg`` (missing cells are left out)."""
    root = Path(cfg.output)
    rows = []
    for spec in cfg.specs:
        for task in cfg.tasks:
            for seed in cfg.seeds:
                path = cell_path(root, spec.trained, task, seed)
                if not path.is_file():
                    continue
                meta, arrays = load_cell(path)
                rows += cell_rows(spec, meta, arrays, cfg.n_bins)
    summary = summarise(rows)
    write_table(root, cfg, rows, summary)
    return {"rows": rows, "summary": summary}
