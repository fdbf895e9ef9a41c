"""Guide-family comparison: several posteriors fitted on the same data, side by side.

:func:`compare_guides` fits one ScalaBL model per guide family and seed (same
base model, LoRA settings, training questions, data order, seed and step
budget; only the guide differs) in the regime Bayesian LoRA is for (by
default 64 training questions for 10 epochs, as the calibration study), and
reports for each:

* held-out ACC, ECE (15 bins), NLL and Brier of the BMA over ``num_samples``
  draws on the report questions (the benchmark's split protocol, so the
  questions are those of ``docs/calibration.md``);
* the held-out elpd (the BMA's log predictive density) with its standard
  error, and its paired difference to the first family with the SE of the
  paired per-question differences;
* k-hat of q against the posterior of **all** training questions, and
  PSIS-LOO of the training questions with the p/q correction, both from one
  (``diag_samples`` x N) matrix (:func:`scalabl_pyro.diagnostics.khat.diagnose`),
  with the counts of questions per Pareto-k band;
* the largest posterior correlation, and how far training moved the
  correlations from the guide's initialisation;
* free variational parameters and training time.

``official`` is the paper's recipe as a family: the log-mean-field guide
trained with the reference objective and the official prior.

Resumable: each finished (family, seed) leaves ``families/<name>/seed<k>/``
with ``result.json`` (the row, the settings it was made with and the
history) and ``arrays.npz``; a re-run with the same output directory loads
those and fits only what is missing. A finished cell whose settings differ
from the requested ones is refused, never reused. Outputs:
``guide_comparison.{md,csv,json}`` and PNG figures, all written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.diagnostics.importance import ElpdResult, heldout_elpd, paired_difference
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.io.checkpoint import write_json
from scalabl_pyro.program.families import GUIDE_FAMILIES, check_family
from scalabl_pyro.program.guides import count_free_parameters, guide_covariance
from scalabl_pyro.utils.atomic import atomic_open, write_text_atomic

log = logging.getLogger(__name__)

#: Families that are a whole recipe, not only a guide: name -> (model, train) settings.
RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "official": (
        {"guide": "log_mean_field", "reference_prior_quirk": True},
        {"objective": "reference"},
    ),
}
DEFAULT_FAMILIES = ("mean_field", "full_rank", "low_rank", "block", "official")
RESULT_FILE = "result.json"
ARRAYS_FILE = "arrays.npz"
CHECKPOINT_DIR = "checkpoint"
TABLE_STEM = "guide_comparison"
#: Settings that do not change a cell's numbers (they may differ between runs).
_NOT_SETTINGS = ("families", "seeds", "output_dir", "progress", "save_checkpoints")


@dataclass
class CompareConfig:
    """Settings of a comparison. Defaults: the calibration study's overfitting regime.

    64 training questions for 160 steps of 4 (10 epochs), lr 1e-3 (``var_lr``
    None: the objective's default, 10 x lr for the ELBO), initial sigma and
    answer scores at the library defaults (0.4, per-token mean), 100
    selection / 200 report questions, BMA over 10 draws; k-hat and LOO from
    100 draws of q scored on every training question.
    """

    families: tuple[str, ...] = DEFAULT_FAMILIES
    seeds: tuple[int, ...] = (0,)
    base_model: str = "smollm2-135m"
    dtype: str = "auto"
    task: str = "arc_easy"
    train_limit: int | None = 64
    steps: int = 160
    batch_size: int = 4
    lr: float = 1e-3
    var_lr: float | None = None
    init_scale: float | None = None  # None: each family's default (0.4; 0.05 for official)
    normalization: str = "mean"
    prior_scale: float = 1.0
    rank: int = 8
    guide_rank: int = 4
    select_limit: int | None = 100
    eval_limit: int | None = 200
    data_seed: int = 0
    num_samples: int = 10
    diag_samples: int = 100
    exact_limit: int = 512
    subsample_size: int = 128
    output_dir: str = "guide_comparison"
    progress: bool = False
    save_checkpoints: bool = True

    def __post_init__(self) -> None:
        self.families = tuple(self.families)
        self.seeds = tuple(int(x) for x in self.seeds)
        if not self.families:
            raise ScalaBLError("no guide families to compare; name at least one")
        for f in self.families:
            if f not in RECIPES:
                check_family(f)
        if len(set(self.families)) != len(self.families):
            raise ScalaBLError(f"guide families repeat in {list(self.families)}; name each once")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ScalaBLError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        for name in ("steps", "num_samples", "diag_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ScalaBLError(f"{name} must be >= 1, got {getattr(self, name)}")
        from scalabl_pyro.diagnostics.importance import MIN_KHAT_SAMPLES

        if self.diag_samples < MIN_KHAT_SAMPLES:
            raise ScalaBLError(
                f"diag_samples must be >= {MIN_KHAT_SAMPLES} for k-hat and PSIS-LOO (PSIS fits "
                f"the largest 20 % of the weights), got {self.diag_samples}"
            )

    @classmethod
    def quick(cls, **overrides) -> CompareConfig:
        """A few-minute version (notebooks, smoke tests)."""
        base: dict[str, Any] = dict(
            train_limit=16,
            steps=8,
            select_limit=8,
            eval_limit=24,
            num_samples=4,
            diag_samples=25,
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        """JSON-serialisable settings."""
        d = asdict(self)
        d["families"], d["seeds"] = list(self.families), list(self.seeds)
        return d

    def settings(self) -> dict[str, Any]:
        """What a cell's numbers depend on (a finished cell must match these to be reused)."""
        return {k: v for k, v in self.to_dict().items() if k not in _NOT_SETTINGS}


@dataclass
class FamilyResult:
    """Everything measured for one (family, seed): scalars in ``row``, arrays beside them."""

    family: str
    seed: int
    row: dict[str, Any]
    history: dict
    layers: list[str]
    arrays: dict[str, np.ndarray]

    @property
    def heldout(self) -> ElpdResult:
        """The BMA's elpd on the report questions."""
        return heldout_elpd(self.arrays["heldout_log_lik"])

    @property
    def draws(self) -> np.ndarray:
        """(S, L, r) draws of q (the diagnostics' draws)."""
        return self.arrays["draws"]

    def inference_data(self) -> Any:
        """An InferenceData of this fit: draws of q, training log-likelihoods and log weights."""
        from scalabl_pyro.diagnostics.posterior import history_arrays, inference_data_from_arrays

        a = self.arrays
        return inference_data_from_arrays(
            a["draws"][None],
            self.layers,
            prior=a["prior"][None] if "prior" in a else None,
            log_likelihood=a["train_log_lik"][None] if "train_log_lik" in a else None,
            histories=[history_arrays(self.history)],
            log_weights=a["log_weights"][None] if "log_weights" in a else None,
            attrs={"family": self.family, "seed": self.seed},
        )


@dataclass
class ComparisonResult:
    """All (family, seed) results, the summary rows, paired differences and files."""

    config: CompareConfig
    cells: dict[tuple[str, int], FamilyResult]
    files: dict[str, str] = field(default_factory=dict)

    @property
    def families(self) -> dict[str, FamilyResult]:
        """The first seed's result of every family (figures, notebooks)."""
        s0 = self.config.seeds[0]
        return {f: self.cells[(f, s0)] for f in self.config.families}

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One summary row per family (mean over seeds; std where there are several)."""
        return summary_rows(self)

    def paired(self) -> list[dict[str, Any]]:
        """Held-out elpd of every family minus the first family's, per seed, paired by question."""
        return paired_rows(self)

    def table(self) -> str:
        """The markdown table."""
        return markdown_table(self.rows)


# ------------------------------------------------------------------- memory


class PeakMemory:
    """Peak resident memory (MiB) of this process during a block, sampled every 50 ms.

    Uses ``psutil`` when present, else the process-lifetime ``ru_maxrss``
    (then the figure is the peak so far, not of the block). With CUDA the
    block's ``torch.cuda.max_memory_allocated`` is recorded too.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.rss_mib = float("nan")
        self.cuda_mib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> float:
        try:
            import psutil

            return psutil.Process().memory_info().rss / 2**20
        except ImportError:  # pragma: no cover - psutil is installed with the test deps
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.rss_mib = max(self.rss_mib, self._rss())

    def __enter__(self) -> PeakMemory:
        self.rss_mib = self._rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.rss_mib = max(self.rss_mib, self._rss())
        if torch.cuda.is_available():
            self.cuda_mib = torch.cuda.max_memory_allocated() / 2**20


# ------------------------------------------------------------------- files


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _json_safe(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python (strict JSON)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ------------------------------------------------------------------- tables

#: (column, header, format) of the markdown table.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("family", "guide", "{}"),
    ("seeds", "seeds", "{}"),
    ("acc", "ACC", "{:.3f}"),
    ("ece", "ECE", "{:.3f}"),
    ("nll", "NLL", "{:.3f}"),
    ("brier", "Brier", "{:.3f}"),
    ("heldout_elpd", "held-out elpd", "{:.1f}"),
    ("heldout_se", "SE", "{:.1f}"),
    ("khat_q", "k-hat q", "{:.2f}"),
    ("loo_elpd", "train LOO elpd", "{:.1f}"),
    ("loo_se", "SE", "{:.1f}"),
    ("loo_k", "LOO k good/ok/bad/very bad", "{}"),
    ("mean_std_s", "mean sd(s)", "{:.3f}"),
    ("max_abs_corr", "max abs corr", "{:.3f}"),
    ("variational_params", "var. params", "{:,}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("diag_seconds", "diag s", "{:.0f}"),
)
#: Scalars averaged over seeds in the summary (std reported beside the mean).
_MEAN_KEYS = (
    "acc",
    "ece",
    "nll",
    "brier",
    "heldout_elpd",
    "khat_q",
    "loo_elpd",
    "mean_std_s",
    "mean_abs_s",
    "max_abs_corr",
    "corr_change",
    "train_seconds",
    "eval_seconds",
    "diag_seconds",
    "final_neg_elbo",
    "final_kl",
)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _fmt(row: dict[str, Any], key: str, fmt: str) -> str:
    text = _cell(row.get(key), fmt)
    sd = row.get(f"{key}_std")
    if sd is not None and text != "n/a" and isinstance(sd, float) and math.isfinite(sd):
        text += " ± " + _cell(sd, fmt)
    return text


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a markdown table (one row per family; mean ± std over seeds)."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "family" else "---:" for k, _, _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r, k, f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines)


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as CSV (every scalar column of the rows)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], (dict, list))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in keys})
    return buf.getvalue()


def summary_rows(result: ComparisonResult) -> list[dict[str, Any]]:
    """One row per family: means over seeds (``<key>_std`` beside them with several seeds)."""
    out = []
    for fam in result.config.families:
        cells = [result.cells[(fam, s)] for s in result.config.seeds if (fam, s) in result.cells]
        if not cells:
            continue
        row: dict[str, Any] = {"family": fam, "seeds": len(cells)}
        for key in _MEAN_KEYS:
            vals = [c.row.get(key) for c in cells]
            vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
            row[key] = float(np.mean(vals)) if vals else None
            if len(vals) > 1:
                row[f"{key}_std"] = float(np.std(vals, ddof=1))
        row["heldout_se"] = _pooled_se([c.row.get("heldout_se") for c in cells])
        row["loo_se"] = _pooled_se([c.row.get("loo_se") for c in cells])
        bands = ("good", "ok", "bad", "very_bad")
        if all(c.row.get("loo_k_counts") for c in cells):
            counts = {b: sum(int(c.row["loo_k_counts"][b]) for c in cells) for b in bands}
            row["loo_k_counts"] = counts
            row["loo_k"] = "/".join(str(counts[b]) for b in bands)
        else:
            row["loo_k"] = None
        for key in ("variational_params", "lora_params", "latent_dim", "khat_estimator"):
            row[key] = cells[0].row.get(key)
        row["khat_q_max"] = max(
            (float(c.row["khat_q"]) for c in cells if c.row.get("khat_q") is not None),
            default=None,
        )
        out.append(row)
    return out


def _pooled_se(ses: Sequence[Any]) -> float | None:
    """SE of the mean over seeds of independent estimates: sqrt(sum se^2) / k."""
    vals = [float(v) for v in ses if v is not None]
    if not vals or len(vals) != len(ses):
        return None
    return float(math.sqrt(sum(v * v for v in vals)) / len(vals))


def paired_rows(result: ComparisonResult) -> list[dict[str, Any]]:
    """Held-out elpd differences to the first family, paired by question, per seed and pooled."""
    fams = result.config.families
    ref = fams[0]
    rows = []
    for fam in fams[1:]:
        per_seed, diffs, ses = [], [], []
        for s in result.config.seeds:
            a, b = result.cells.get((fam, s)), result.cells.get((ref, s))
            if a is None or b is None:
                continue
            d = paired_difference(a.heldout, b.heldout)
            per_seed.append({"seed": s, **d})
            diffs.append(d["elpd_diff"])
            ses.append(d["dse"])
        if not per_seed:
            continue
        k = len(diffs)
        rows.append(
            {
                "family": fam,
                "versus": ref,
                "elpd_diff": float(np.mean(diffs)),
                "dse": float(math.sqrt(sum(x * x for x in ses)) / k),
                "seeds": per_seed,
            }
        )
    return rows


# ------------------------------------------------------------------- fitting


def _posterior_correlation(draws: np.ndarray, exact_cov: np.ndarray | None) -> np.ndarray:
    """(D, D) correlation: exact from the guide's covariance when known, else from draws."""
    if exact_cov is not None:
        cov = exact_cov
    else:
        flat = draws.reshape(draws.shape[0], -1)
        cov = np.cov(flat, rowvar=False)
    sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    return cov / sd[:, None] / sd[None, :]


def _build(family: str, cfg: CompareConfig, seed: int) -> tuple[Any, Any]:
    """(ScalaBLConfig, TrainConfig) of one family at one seed."""
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.inference.train import TrainConfig

    model_kw, train_kw = RECIPES.get(family, ({"guide": family}, {}))
    config = ScalaBLConfig(
        base_model=cfg.base_model,
        task_format="choice",
        rank=cfg.rank,
        guide_rank=cfg.guide_rank,
        prior_scale=cfg.prior_scale,
        init_scale=cfg.init_scale,
        normalization=cfg.normalization,
        dtype=cfg.dtype,
        seed=seed,
        **model_kw,
    )
    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        var_lr=cfg.var_lr,
        seed=seed,
        progress=cfg.progress,
        **train_kw,
    )
    return config, tcfg


def _fit_family(
    family: str,
    seed: int,
    cfg: CompareConfig,
    train: MCDataset,
    report: MCDataset,
    cell_dir: Path,
    load_base: Callable[[], tuple[Any, Any]] | None = None,
) -> FamilyResult:
    from pyro.infer.autoguide import AutoDelta

    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.diagnostics.fits import layer_names, prior_draws
    from scalabl_pyro.diagnostics.khat import diagnose

    config, tcfg = _build(family, cfg, seed)
    sbl = ScalaBL.from_base(config) if load_base is None else ScalaBL(config, *load_base())
    cov_init = guide_covariance(sbl.guide, sbl.model.site_names)
    t0 = time.perf_counter()
    history = sbl.fit(train, tcfg)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    pred = sbl.predict(report, num_samples=cfg.num_samples, seed=seed, progress=cfg.progress)
    eval_seconds = time.perf_counter() - t1
    point_mass = isinstance(sbl.guide, AutoDelta)
    t2 = time.perf_counter()
    diag = None
    if not point_mass:
        diag = diagnose(
            sbl,
            train,
            num_samples=cfg.diag_samples,
            exact_limit=cfg.exact_limit,
            subsample_size=cfg.subsample_size,
            seed=seed,
            progress=cfg.progress,
        )
    diag_seconds = time.perf_counter() - t2
    if cfg.save_checkpoints:
        sbl.save_pretrained(cell_dir / CHECKPOINT_DIR)
    if diag is not None:
        draws = diag.draws
    else:
        point = sbl.posterior_mean()
        one = np.stack([point[n].double().cpu().numpy() for n in sbl.model.site_names], axis=0)
        draws = one[None].repeat(cfg.diag_samples, axis=0)
    prior = prior_draws(sbl.model, cfg.diag_samples, seed + 2)
    exact_cov = None if point_mass else guide_covariance(sbl.guide, sbl.model.site_names)
    corr = None if point_mass else _posterior_correlation(draws, exact_cov)
    corr_init = (
        None if cov_init is None or corr is None else _posterior_correlation(draws, cov_init)
    )
    held = heldout_elpd(pred.log_likelihood())
    steps = history.to_dict()["steps"]
    last = steps[-min(10, len(steps)) :]
    flat = draws.reshape(draws.shape[0], -1)
    row: dict[str, Any] = {
        "family": family,
        "seed": seed,
        **pred.metrics(),
        "heldout_elpd": held.elpd,
        "heldout_se": held.se,
        **_diag_row(diag),
        "final_neg_elbo": float(np.mean([r["loss"] for r in last])),
        "final_nll": float(np.mean([r["nll"] for r in last])),
        "final_kl": float(np.mean([r["kl"] for r in last])),
        "mean_std_s": float(flat.std(axis=0).mean()),
        "mean_abs_s": float(np.abs(flat.mean(axis=0)).mean()),
        "max_abs_corr": None if corr is None else _max_off_diag(corr),
        "max_abs_corr_init": None if corr_init is None else _max_off_diag(corr_init),
        "corr_change": None if corr_init is None else float(np.max(np.abs(corr - corr_init))),
        "corr_exact": exact_cov is not None,
        "variational_params": count_free_parameters(sbl.guide),
        "lora_params": sbl.subspace.num_lora_parameters(),
        "latent_dim": sbl.subspace.num_latents,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "diag_seconds": diag_seconds,
        "diag_draws": cfg.diag_samples,
        "num_train": len(train),
        "num_report": len(report),
        "num_samples": pred.num_samples,
        "threads": torch.get_num_threads(),
    }
    arrays = {
        "draws": draws,
        "heldout_log_lik": pred.log_likelihood(),
        "heldout_sample_log_probs": pred.sample_log_probs.astype(np.float32),
        "probs": pred.probs,
        "labels": pred.labels,
    }
    if diag is not None:
        arrays.update(
            {
                "log_q": diag.log_q,
                "log_prior": diag.log_prior,
                "log_weights": diag.khat.log_weights,
                "train_log_lik": diag.train_log_lik,
                "train_indices": diag.train_indices,
                "loo_pareto_k": diag.loo.pareto_k,
                "loo_pointwise": diag.loo.pointwise,
            }
        )
    if corr is not None:  # for the figures; the row keeps the exact summaries
        arrays["correlation"] = corr.astype(np.float16)
    if prior is not None:
        arrays["prior"] = prior
    result = FamilyResult(family, seed, row, history.to_dict(), layer_names(sbl.model), arrays)
    _save_npz_atomic(cell_dir / ARRAYS_FILE, arrays)
    write_json(
        cell_dir / RESULT_FILE,
        _json_safe(
            {
                "row": row,
                "settings": cfg.settings(),
                "history": result.history,
                "layers": result.layers,
                "machine": _machine(),
            }
        ),
    )
    del sbl
    return result


def _diag_row(diag: Any) -> dict[str, Any]:
    """The k-hat and training-LOO columns (None for a point mass: it has no density)."""
    if diag is None:
        keys = ("khat_q", "khat_q_ess", "khat_estimator", "khat_log_lik_se", "loo_elpd")
        return {k: None for k in (*keys, "loo_se", "p_loo", "loo_k_counts", "loo_max_k")}
    return {
        "khat_q": diag.khat.to_dict()["khat"],
        "khat_q_ess": diag.khat.ess,
        "khat_estimator": diag.khat.estimator,
        "khat_log_lik_se": diag.khat.log_lik_se,
        "loo_elpd": diag.loo.elpd,
        "loo_se": diag.loo.se,
        "p_loo": diag.loo.p_loo,
        "loo_k_counts": diag.loo.k_counts(),
        "loo_max_k": float(np.max(diag.loo.pareto_k)),
    }


def _max_off_diag(corr: np.ndarray) -> float:
    return float(np.max(np.abs(corr - np.diag(np.diag(corr)))))


def cell_dir(out: Path, family: str, seed: int) -> Path:
    """Where one (family, seed) cell lives."""
    return out / "families" / family / f"seed{seed}"


def load_family_result(
    cell: Path, family: str, seed: int, settings: dict[str, Any] | None = None
) -> FamilyResult | None:
    """A finished cell's stored result (None if it is not complete).

    With ``settings``, a cell made with different settings is refused with
    one line that names the first differing setting.
    """
    res, arr = cell / RESULT_FILE, cell / ARRAYS_FILE
    if not (res.is_file() and arr.is_file()):
        return None
    try:
        meta = json.loads(res.read_text())
        with np.load(arr) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        log.warning("%s is damaged (%s); fitting it again", cell, e)
        print(f"{family} seed {seed}: the stored cell is damaged; fitting it again", flush=True)
        return None
    if settings is not None:
        saved = meta.get("settings") or {}
        differ = [k for k in sorted(set(settings) | set(saved)) if saved.get(k) != settings.get(k)]
        if differ:
            k = differ[0]
            raise ScalaBLError(
                f"finished cell {cell} was made with {k}={saved.get(k)!r}, not "
                f"{settings.get(k)!r}; use a new --output (or delete that cell to refit it)"
            )
    row = dict(meta["row"])
    row["family"] = family
    return FamilyResult(family, seed, row, meta["history"], meta["layers"], arrays)


def family_correlation(family_dir: Path) -> np.ndarray | None:
    """The stored (D, D) posterior correlation of a finished cell (None if absent)."""
    arr = family_dir / ARRAYS_FILE
    if not arr.is_file():
        return None
    with np.load(arr) as z:
        return z["correlation"] if "correlation" in z.files else None


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def compare_guides(
    cfg: CompareConfig,
    *,
    train: MCDataset | None = None,
    report: MCDataset | None = None,
    load_base: Callable[[], tuple[Any, Any]] | None = None,
    figures: bool = True,
    command: str | None = None,
) -> ComparisonResult:
    """Fit (or load) every (family, seed) of ``cfg`` and write the side-by-side report.

    ``train`` / ``report`` default to ``cfg.task`` under the benchmark's split
    protocol (``train_limit`` training questions; ``eval_limit`` report
    questions from the test split, or from the half of validation not used
    for selection). Finished cells are loaded, not refitted, and must have
    been made with the same settings. ``load_base`` returns a fresh ``(model,
    tokenizer)`` per cell (default: ``cfg.base_model`` in ``cfg.dtype``).
    ``command`` is recorded in the outputs.
    """
    out = Path(cfg.output_dir)
    from scalabl_pyro.io.checkpoint import check_writable

    check_writable(out, flag="output_dir")
    if (train is None or report is None) and _is_file(cfg.task):
        train, report = _file_splits(cfg, train, report)
    if train is None or report is None:
        from scalabl_pyro.experiments.benchmark import BenchmarkConfig, task_splits

        bcfg = BenchmarkConfig(
            methods=["scalabl"],
            tasks=(cfg.task,),
            train_limit=cfg.train_limit,
            select_limit=cfg.select_limit,
            eval_limit=cfg.eval_limit,
            data_seed=cfg.data_seed,
        )
        tr, _, rep = task_splits(cfg.task, bcfg)
        train = train if train is not None else tr
        report = report if report is not None else rep[cfg.task]
    out.mkdir(parents=True, exist_ok=True)
    settings = cfg.settings()
    cells: dict[tuple[str, int], FamilyResult] = {}
    for seed in cfg.seeds:
        for family in cfg.families:
            cdir = cell_dir(out, family, seed)
            done = load_family_result(cdir, family, seed, settings)
            if done is not None:
                print(f"{family} seed {seed}: already done, loaded from {cdir}", flush=True)
                cells[(family, seed)] = done
                continue
            cdir.mkdir(parents=True, exist_ok=True)
            print(f"{family} seed {seed}: fitting ({cfg.steps} steps)", flush=True)
            r = _fit_family(family, seed, cfg, train, report, cdir, load_base)
            cells[(family, seed)] = r
            print(
                f"{family} seed {seed}: acc {r.row['acc']:.3f} ece {r.row['ece']:.3f} "
                f"nll {r.row['nll']:.3f} k-hat(q) {_cell(r.row['khat_q'], '{:.2f}')} "
                f"train {r.row['train_seconds']:.0f} s diag {r.row['diag_seconds']:.0f} s",
                flush=True,
            )
    result = ComparisonResult(cfg, cells)
    _write_reports(result, train, report, command)
    if figures:
        from scalabl_pyro.diagnostics.plots import write_comparison_figures

        result.files.update(write_comparison_figures(result, out))
    return result


def _is_file(task: str) -> bool:
    from scalabl_pyro.data.local import is_local_path
    from scalabl_pyro.data.registry import KNOWN_TASKS, canonical_name

    return canonical_name(task) not in KNOWN_TASKS and is_local_path(task)


def _file_splits(
    cfg: CompareConfig, train: MCDataset | None, report: MCDataset | None
) -> tuple[MCDataset, MCDataset]:
    """A local file is one split: disjoint random training and report questions from it."""
    import dataclasses
    import random

    from scalabl_pyro.data import load_task

    data = load_task(cfg.task)
    idx = list(range(len(data)))
    random.Random(cfg.data_seed).shuffle(idx)
    n_train = min(cfg.train_limit or len(idx) // 2, len(idx) - 1)
    rest = idx[n_train:][: cfg.eval_limit or None]

    def pick(ids: list[int], tag: str) -> MCDataset:
        return dataclasses.replace(
            data, split=f"{data.split}[{tag}]", examples=[data.examples[i] for i in sorted(ids)]
        )

    return train or pick(idx[:n_train], "train"), report or pick(rest, "report")


def _write_reports(
    result: ComparisonResult, train: MCDataset, report: MCDataset, command: str | None
) -> None:
    out = Path(result.config.output_dir)
    cfg = result.config
    rows = result.rows
    paired = result.paired()
    seeds = ", ".join(str(s) for s in cfg.seeds)
    md = [
        f"### Guide-family comparison: {cfg.base_model} on {cfg.task}",
        "",
        f"Train {len(train)} questions ({train.name}/{train.split}), {cfg.steps} steps of "
        f"{cfg.batch_size}, lr {cfg.lr}, var_lr {cfg.var_lr or 'objective default'}, "
        f"prior N(0, {cfg.prior_scale}^2), initial sigma {cfg.init_scale or 'family default'}, "
        f"{cfg.normalization} answer scores, LoRA r={cfg.rank}, seeds {seeds}. Held out: "
        f"{len(report)} questions ({report.name}/{report.split}), BMA over {cfg.num_samples} "
        f"draws. k-hat of q and training LOO: {cfg.diag_samples} draws of q, each scored on "
        f"every training question (exact up to {cfg.exact_limit} questions).",
        "",
        markdown_table(rows),
        "",
        "Mean ± std over seeds. ECE: fraction, 15 bins. held-out elpd: sum over the report "
        "questions of log mean_s p(y | x, s) (the BMA's log predictive density, nats; SE over "
        "questions, pooled over seeds). k-hat q: Pareto k of log p(s) + sum_i log p(y_i | s) - "
        "log q(s) over all training questions (< 0.5 good, < 0.7 usable, above: q cannot be "
        "importance-corrected to the posterior). train LOO elpd: PSIS-LOO of the training "
        "questions with ratios w_s / p(y_i | s); the k column counts training questions per "
        "Pareto-k band (<= 0.5, <= 0.7, <= 1, > 1), summed over seeds. mean sd(s): posterior "
        "std of s averaged over latent dimensions. max abs corr: largest off-diagonal "
        "posterior correlation.",
    ]
    if paired:
        md += [
            "",
            f"Held-out elpd minus {cfg.families[0]}'s, paired by question "
            "(mean over seeds; SE of the paired differences, pooled):",
            "",
            "| guide | elpd diff | SE | per seed |",
            "|---|---:|---:|---|",
        ]
        for p in paired:
            per = "; ".join(
                f"seed {x['seed']}: {x['elpd_diff']:.1f} ± {x['dse']:.1f}" for x in p["seeds"]
            )
            md.append(f"| {p['family']} | {p['elpd_diff']:.1f} | {p['dse']:.1f} | {per} |")
    if command:
        md += ["", f"Command: `{command}`"]
    machine = _machine()
    md += ["", f"Machine: {machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']}"]
    if machine["cuda"]:
        md[-1] += f", {machine['cuda']}"
    write_text_atomic(out / f"{TABLE_STEM}.md", "\n".join(md) + "\n")
    write_text_atomic(out / f"{TABLE_STEM}.csv", csv_table(rows))
    write_json(
        out / f"{TABLE_STEM}.json",
        _json_safe(
            {
                "config": cfg.to_dict(),
                "rows": rows,
                "cells": [c.row for c in result.cells.values()],
                "paired": paired,
                "command": command,
                "machine": machine,
                "num_train": len(train),
                "num_report": len(report),
            }
        ),
    )
    for ext in ("md", "csv", "json"):
        result.files[ext] = str(out / f"{TABLE_STEM}.{ext}")


__all__ = [
    "CompareConfig",
    "ComparisonResult",
    "DEFAULT_FAMILIES",
    "FamilyResult",
    "GUIDE_FAMILIES",
    "PeakMemory",
    "RECIPES",
    "cell_dir",
    "compare_guides",
    "csv_table",
    "family_correlation",
    "load_family_result",
    "markdown_table",
    "paired_rows",
    "summary_rows",
]
