"""Guide-family comparison: several posteriors fitted on the same data, side by side.

:func:`compare_guides` fits one ScalaBL model per guide family (same base
model, LoRA settings, data order, seed and step budget; only the guide
differs) and reports for each:

* the final ELBO: the mean training loss (-ELBO, data-set scale) over the
  last ``min(10, steps)`` steps, and its NLL / KL parts;
* held-out ACC, ECE (15 bins), NLL and Brier of the BMA over ``num_samples``;
* PSIS-LOO of the held-out pointwise log-likelihoods (``az.loo``; ``az.compare``
  ranks the families), with the number of examples whose Pareto k > 0.7;
* the largest posterior correlation, and how far training moved the correlations from
  the guide's initialisation (Pyro's low-rank guide starts with random ones);
* the Pareto-k-hat of q itself (:func:`~scalabl_pyro.diagnostics.pareto_k_of_q`)
  on a subset of the training data;
* free variational parameters (``guides.count_free_parameters``) and LoRA
  parameters; training time; peak memory (process RSS sampled during the
  family's fit and evaluation, and CUDA max allocated).

Resumable: each finished family leaves ``families/<name>/`` with its
checkpoint, ``result.json`` and ``arrays.npz`` (draws, log-likelihoods,
covariance); a re-run with the same output directory loads those and fits
only what is missing. Outputs: ``guide_comparison.{md,csv,json}`` and PNG
figures, all written atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import platform
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import torch

from scalabl_pyro.checkpoint import write_json
from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.guides import GUIDE_FAMILIES, check_family, count_free_parameters

log = logging.getLogger(__name__)

DEFAULT_FAMILIES = ("mean_field", "full_rank", "low_rank", "block")
RESULT_FILE = "result.json"
ARRAYS_FILE = "arrays.npz"
CHECKPOINT_DIR = "checkpoint"
TABLE_STEM = "guide_comparison"


@dataclass
class CompareConfig:
    """Settings of a comparison (defaults: the demo's recipe on the embedded model)."""

    families: tuple[str, ...] = DEFAULT_FAMILIES
    base_model: str = "smollm2-135m"
    dtype: str = "bfloat16"
    task: str = "arc_easy"
    steps: int = 150
    batch_size: int = 4
    lr: float = 1e-3
    var_lr: float = 1e-2
    prior_scale: float = 1.0
    rank: int = 8
    guide_rank: int = 4
    eval_limit: int | None = 200
    num_samples: int = 10
    khat_samples: int = 48
    khat_subset: int = 16
    diag_samples: int = 400  # cheap posterior draws (no LLM pass) for scales and correlations
    seed: int = 0
    output_dir: str = "guide_comparison"
    progress: bool = False

    def __post_init__(self) -> None:
        self.families = tuple(self.families)
        if not self.families:
            raise ScalaBLError("no guide families to compare; name at least one")
        for f in self.families:
            check_family(f)
        if len(set(self.families)) != len(self.families):
            raise ScalaBLError(f"guide families repeat in {list(self.families)}; name each once")
        for name in ("steps", "num_samples", "khat_samples", "khat_subset", "diag_samples"):
            if getattr(self, name) < 1:
                raise ScalaBLError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def quick(cls, **overrides) -> CompareConfig:
        """A few-minute version (notebooks, smoke tests)."""
        base: dict[str, Any] = dict(
            steps=8, eval_limit=24, num_samples=4, khat_samples=25, khat_subset=8
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        """JSON-serialisable settings."""
        d = asdict(self)
        d["families"] = list(self.families)
        return d


@dataclass
class FamilyResult:
    """Everything measured for one family (scalars in ``row``, arrays beside them)."""

    family: str
    row: dict[str, Any]
    history: dict
    layers: list[str]
    draws: np.ndarray  # (S_diag, L, r) cheap posterior draws
    log_likelihood: np.ndarray  # (S, N) held-out pointwise log-likelihood
    probs: np.ndarray  # (N, C) BMA probabilities
    labels: np.ndarray  # (N,)
    prior: np.ndarray | None = None  # (S_diag, L, r)
    log_weights: np.ndarray | None = None  # (S_k,) raw log importance weights

    def inference_data(self) -> az.InferenceData:
        """An InferenceData of this family (posterior = the cheap draws; LOO on held-out data)."""
        from scalabl_pyro.diagnostics import history_arrays, inference_data_from_arrays

        s = self.log_likelihood.shape[0]
        return inference_data_from_arrays(
            self.draws[None, :s],
            self.layers,
            prior=None if self.prior is None else self.prior[None, :s],
            log_likelihood=self.log_likelihood[None],
            observed=self.labels,
            histories=[history_arrays(self.history)],
            attrs={"family": self.family},
        )


@dataclass
class ComparisonResult:
    """All families' results, the LOO ranking, and where the files went."""

    config: CompareConfig
    families: dict[str, FamilyResult]
    loo_compare: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One table row per family, in the configured order."""
        return [self.families[f].row for f in self.config.families]

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


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    ("final_neg_elbo", "-ELBO (last 10)", "{:.1f}"),
    ("final_kl", "KL", "{:.1f}"),
    ("acc", "ACC", "{:.3f}"),
    ("ece", "ECE", "{:.3f}"),
    ("nll", "NLL", "{:.3f}"),
    ("brier", "Brier", "{:.3f}"),
    ("elpd_loo", "elpd LOO", "{:.1f}"),
    ("loo_se", "SE", "{:.1f}"),
    ("loo_bad_k", "LOO k>0.7", "{}"),
    ("khat_q", "k-hat q", "{:.2f}"),
    ("mean_std_s", "mean sd(s)", "{:.4f}"),
    ("max_abs_corr", "max abs corr", "{:.3f}"),
    ("corr_change", "corr moved", "{:.3f}"),
    ("variational_params", "var. params", "{:,}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a markdown table (one row per family)."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "family" else "---:" for k, _, _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k), f) for k, _, f in COLUMNS) + " |")
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


def guide_covariance(sbl: Any) -> np.ndarray | None:
    """The exact (D, D) covariance of a Gaussian guide, in site order (None if not closed-form).

    Mean-field: diagonal of the scales; full-rank / low-rank: Pyro's
    ``get_posterior()`` (the joint Normal over the packed latent vector,
    identity transform since ``s`` is real); block (``AutoStructured`` with
    dense conditionals and no dependencies, ``s_l = loc_l + diag(scale_l) L_l
    z``): block-diagonal ``diag(scale_l) L_l L_l^T diag(scale_l)``. Other
    families: None.
    """
    from operator import attrgetter

    from pyro.infer.autoguide import AutoContinuous, AutoStructured

    from scalabl_pyro.guides import AutoLogMeanField, AutoMeanFieldNormal
    from scalabl_pyro.model import pyro_settings

    guide = sbl.guide
    with pyro_settings(), torch.no_grad():
        if isinstance(guide, (AutoMeanFieldNormal, AutoLogMeanField)):
            scales = [guide._get_loc_and_scale(n)[1].reshape(-1) for n in sbl.model.site_names]
            return np.diag(torch.cat(scales).double().cpu().numpy() ** 2)
        if isinstance(guide, AutoContinuous):
            order = list(guide._unconstrained_shapes)
            if order != list(sbl.model.site_names):
                return None
            post = guide.get_posterior()
            return post.covariance_matrix.double().cpu().numpy()
        if isinstance(guide, AutoStructured) and not guide.dependencies:
            blocks = []
            for n in sbl.model.site_names:
                if guide.conditionals.get(n) != "mvn":
                    return None
                scale = attrgetter(n)(guide.scales).reshape(-1).double()
                tril = attrgetter(n)(guide.scale_trils).double()
                blocks.append(scale[:, None] * (tril @ tril.T) * scale[None, :])
            return torch.block_diag(*blocks).cpu().numpy()
    return None


def _fit_family(
    family: str,
    cfg: CompareConfig,
    train: MCDataset,
    validation: MCDataset,
    load_base: Callable[[], tuple[Any, Any]],
    family_dir: Path,
) -> FamilyResult:
    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.diagnostics import layer_names, pareto_k_of_q, prior_draws
    from scalabl_pyro.predict import draw_latents
    from scalabl_pyro.train import TrainConfig

    base, tok = load_base()
    config = ScalaBLConfig(
        base_model=cfg.base_model,
        task_format="choice",
        guide=family,
        rank=cfg.rank,
        guide_rank=cfg.guide_rank,
        prior_scale=None if family == "mle" else cfg.prior_scale,
        dtype=cfg.dtype,
        seed=cfg.seed,
    )
    sbl = ScalaBL(config, base, tok)
    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        var_lr=cfg.var_lr,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    cov_init = guide_covariance(sbl)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        history = sbl.fit(train, tcfg)
        train_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        pred = sbl.predict(
            validation, num_samples=cfg.num_samples, seed=cfg.seed, progress=cfg.progress
        )
        eval_seconds = time.perf_counter() - t1
        point_mass = family in ("delta", "mle")
        khat = None
        log_weights = None
        if not point_mass:
            t2 = time.perf_counter()
            pk = pareto_k_of_q(
                sbl,
                train,
                num_samples=cfg.khat_samples,
                subset_size=cfg.khat_subset,
                seed=cfg.seed,
                progress=cfg.progress,
            )
            khat, log_weights = pk, pk.log_weights
            khat_seconds = time.perf_counter() - t2
        else:
            khat_seconds = 0.0
    sbl.save_pretrained(family_dir / CHECKPOINT_DIR)
    if point_mass:
        point = sbl.posterior_mean()
        draws = np.stack([point[n].double().cpu().numpy() for n in sbl.model.site_names], axis=0)[
            None
        ].repeat(cfg.diag_samples, axis=0)
    else:
        d = draw_latents(sbl.model, sbl.guide, cfg.diag_samples, cfg.seed + 1)
        draws = np.stack([d[n].double().cpu().numpy() for n in sbl.model.site_names], axis=1)
    prior = prior_draws(sbl.model, cfg.diag_samples, cfg.seed + 2)
    exact_cov = guide_covariance(sbl)
    corr = _posterior_correlation(draws, exact_cov) if not point_mass else None
    corr_init = None if cov_init is None else _posterior_correlation(draws, cov_init)
    ll = pred.log_likelihood()
    steps = history.to_dict()["steps"]
    last = steps[-min(10, len(steps)) :]
    row: dict[str, Any] = {
        "family": family,
        **pred.metrics(),
        "final_neg_elbo": float(np.mean([r["loss"] for r in last])),
        "final_nll": float(np.mean([r["nll"] for r in last])),
        "final_kl": float(np.mean([r["kl"] for r in last])),
        "khat_q": None if khat is None else khat.khat,
        "khat_q_ess": None if khat is None else khat.ess,
        "mean_std_s": float(draws.reshape(draws.shape[0], -1).std(axis=0).mean()),
        "mean_abs_s": float(np.abs(draws.reshape(draws.shape[0], -1).mean(axis=0)).mean()),
        "max_abs_corr": None if corr is None else _max_off_diag(corr),
        "max_abs_corr_init": None if corr_init is None else _max_off_diag(corr_init),
        "corr_change": None
        if corr is None or corr_init is None
        else float(np.max(np.abs(corr - corr_init))),
        "corr_exact": exact_cov is not None,
        "variational_params": count_free_parameters(sbl.guide),
        "lora_params": sbl.subspace.num_lora_parameters(),
        "latent_dim": sbl.subspace.num_latents,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "khat_seconds": khat_seconds,
        "peak_rss_mib": mem.rss_mib,
        "peak_cuda_mib": mem.cuda_mib,
        "num_samples": pred.num_samples,
    }
    row.update(_loo_row(ll))
    arrays = {
        "draws": draws,
        "log_likelihood": ll,
        "probs": pred.probs,
        "labels": pred.labels,
    }
    if prior is not None:
        arrays["prior"] = prior
    if log_weights is not None:
        arrays["log_weights"] = log_weights
    if corr is not None:
        arrays["correlation"] = corr
    if corr_init is not None:
        arrays["correlation_init"] = corr_init
    result = FamilyResult(
        family,
        row,
        history.to_dict(),
        layer_names(sbl.model),
        draws,
        ll,
        pred.probs,
        pred.labels,
        prior,
        log_weights,
    )
    _save_npz_atomic(family_dir / ARRAYS_FILE, arrays)
    write_json(
        family_dir / RESULT_FILE,
        _json_safe({"row": row, "history": result.history, "layers": result.layers}),
    )
    del sbl, base
    return result


def _max_off_diag(corr: np.ndarray) -> float:
    return float(np.max(np.abs(corr - np.diag(np.diag(corr)))))


def _loo_row(ll: np.ndarray) -> dict[str, Any]:
    """PSIS-LOO of (S, N) pointwise log-likelihoods: elpd, SE, p_loo, #k > 0.7, max k."""
    if ll.shape[0] < 2:
        return {"elpd_loo": None, "loo_se": None, "p_loo": None, "loo_bad_k": None}
    import warnings

    from scalabl_pyro.diagnostics import inference_data_from_arrays

    idata = inference_data_from_arrays(
        np.zeros((1, ll.shape[0], 1, 1)), ["x"], log_likelihood=ll[None]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Pareto-k warning is reported as a column
        loo = az.loo(idata, pointwise=True)
    k = np.asarray(loo.pareto_k)
    return {
        "elpd_loo": float(loo.elpd_loo),
        "loo_se": float(loo.se),
        "p_loo": float(loo.p_loo),
        "loo_bad_k": int(np.sum(k > 0.7)),
        "loo_max_k": float(np.max(k)),
    }


def load_family_result(family_dir: Path, family: str) -> FamilyResult | None:
    """A finished family's stored result (None if it is not complete)."""
    res, arr = family_dir / RESULT_FILE, family_dir / ARRAYS_FILE
    if not (res.is_file() and arr.is_file()):
        return None
    import json

    meta = json.loads(res.read_text())
    with np.load(arr) as z:
        a = {k: z[k] for k in z.files}
    row = {k: (math.nan if v is None else v) for k, v in meta["row"].items()}
    row["family"] = family
    for k in (
        "khat_q",
        "max_abs_corr",
        "max_abs_corr_init",
        "corr_change",
        "peak_cuda_mib",
        "elpd_loo",
        "loo_se",
        "loo_bad_k",
    ):
        if meta["row"].get(k) is None:
            row[k] = None
    return FamilyResult(
        family,
        row,
        meta["history"],
        meta["layers"],
        a["draws"],
        a["log_likelihood"],
        a["probs"],
        a["labels"],
        a.get("prior"),
        a.get("log_weights"),
    )


def family_correlation(family_dir: Path) -> np.ndarray | None:
    """The stored (D, D) posterior correlation of a finished family (None if point mass)."""
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
    validation: MCDataset | None = None,
    load_base: Callable[[], tuple[Any, Any]] | None = None,
    figures: bool = True,
    command: str | None = None,
) -> ComparisonResult:
    """Fit (or load) every family of ``cfg.families`` and write the side-by-side report.

    ``train`` / ``validation`` default to ``cfg.task``'s splits (validation
    limited to ``cfg.eval_limit`` with ``cfg.seed``); ``load_base`` returns a
    fresh ``(model, tokenizer)`` per family (default: ``cfg.base_model`` in
    ``cfg.dtype``). Families with a complete ``families/<name>/`` directory
    are loaded, not refitted. ``command`` is recorded in the outputs.
    """
    out = Path(cfg.output_dir)
    from scalabl_pyro.checkpoint import check_writable

    check_writable(out, flag="output_dir")
    if train is None or validation is None:
        from scalabl_pyro.data import load_task

        train = train if train is not None else load_task(cfg.task, "train")
        validation = (
            validation
            if validation is not None
            else load_task(cfg.task, "validation", limit=cfg.eval_limit, seed=cfg.seed)
        )
    if load_base is None:
        from scalabl_pyro.loading import load_base_model

        def load_base() -> tuple[Any, Any]:
            return load_base_model(cfg.base_model, dtype=cfg.dtype)

    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, FamilyResult] = {}
    for family in cfg.families:
        fdir = out / "families" / family
        done = load_family_result(fdir, family)
        if done is not None:
            log.info("%s: loaded the finished result from %s", family, fdir)
            print(f"{family}: already done, loaded from {fdir}")
            results[family] = done
            continue
        fdir.mkdir(parents=True, exist_ok=True)
        print(f"{family}: fitting ({cfg.steps} steps)", flush=True)
        results[family] = _fit_family(family, cfg, train, validation, load_base, fdir)
        r = results[family].row
        print(
            f"{family}: acc {r['acc']:.3f} ece {r['ece']:.3f} nll {r['nll']:.3f} "
            f"k-hat(q) {_cell(r['khat_q'], '{:.2f}')} train {r['train_seconds']:.0f} s",
            flush=True,
        )
    result = ComparisonResult(cfg, results)
    result.loo_compare = _loo_compare(results)
    _write_reports(result, train, validation, command)
    if figures:
        from scalabl_pyro.diagnostic_plots import write_comparison_figures

        result.files.update(write_comparison_figures(result, out))
    return result


def _loo_compare(results: dict[str, FamilyResult]) -> list[dict]:
    """``az.compare`` of the families' held-out log-likelihoods (those with >= 2 draws)."""
    import warnings

    ok = {f: r.inference_data() for f, r in results.items() if r.log_likelihood.shape[0] >= 2}
    if len(ok) < 2:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = az.compare(ok, ic="loo")
    rows = []
    for name, rec in df.iterrows():
        rows.append(
            _json_safe(
                {
                    "family": str(name),
                    "rank": int(rec["rank"]),
                    "elpd_loo": float(rec["elpd_loo"]),
                    "elpd_diff": float(rec["elpd_diff"]),
                    "dse": float(rec["dse"]),
                    "weight": float(rec["weight"]),
                    "warning": bool(rec["warning"]),
                }
            )
        )
    return rows


def _write_reports(
    result: ComparisonResult, train: MCDataset, validation: MCDataset, command: str | None
) -> None:
    out = Path(result.config.output_dir)
    cfg = result.config
    rows = result.rows
    md = [
        f"# Guide-family comparison: {cfg.base_model} on {cfg.task}",
        "",
        f"Train {len(train)} examples, {cfg.steps} steps of {cfg.batch_size}, lr {cfg.lr}, "
        f"var_lr {cfg.var_lr}, prior N(0, {cfg.prior_scale}^2), LoRA r={cfg.rank}, "
        f"seed {cfg.seed}; held-out: {len(validation)} {validation.name}/{validation.split} "
        f"questions, BMA over {cfg.num_samples} samples; k-hat of q from {cfg.khat_samples} "
        f"draws, likelihood of {cfg.khat_subset} training questions scaled by N/n.",
        "",
        markdown_table(rows),
        "",
        "-ELBO and KL: mean over the last 10 training steps (data-set scale, nats). "
        "ECE: fraction, 15 bins. elpd LOO: PSIS-LOO of the held-out log-likelihoods "
        f"({cfg.num_samples} draws; 'LOO k>0.7' counts questions whose Pareto k exceeds 0.7). "
        "k-hat q: Pareto k of the importance ratios p(D, s) / q(s) (< 0.7 is usable). "
        "mean sd(s): posterior standard deviation of s averaged over latent dimensions. "
        "max abs corr: largest off-diagonal posterior correlation; corr moved: largest change "
        "of any correlation from the guide's initialisation (Pyro's low-rank guide starts "
        "with random correlations, the others uncorrelated).",
    ]
    if result.loo_compare:
        md += ["", "az.compare (PSIS-LOO):", "", "| guide | rank | elpd_diff | dse | weight |"]
        md += ["|---|---:|---:|---:|---:|"]
        for r in result.loo_compare:
            md.append(
                f"| {r['family']} | {r['rank']} | {_cell(r['elpd_diff'], '{:.2f}')} | "
                f"{_cell(r['dse'], '{:.2f}')} | {_cell(r['weight'], '{:.2f}')} |"
            )
    if command:
        md += ["", f"Command: `{command}`"]
    machine = _machine()
    md += ["", f"Machine: {machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']}"]
    if machine["cuda"]:
        md[-1] += f", {machine['cuda']}"
    _write_text_atomic(out / f"{TABLE_STEM}.md", "\n".join(md) + "\n")
    _write_text_atomic(out / f"{TABLE_STEM}.csv", csv_table(rows))
    write_json(
        out / f"{TABLE_STEM}.json",
        _json_safe(
            {
                "config": cfg.to_dict(),
                "rows": rows,
                "loo_compare": result.loo_compare,
                "command": command,
                "machine": machine,
                "num_train": len(train),
                "num_validation": len(validation),
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
    "compare_guides",
    "csv_table",
    "family_correlation",
    "guide_covariance",
    "load_family_result",
    "markdown_table",
]
