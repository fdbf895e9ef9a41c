"""Fit one (family, seed): train, predict the report questions, diagnose q, measure.

Also :class:`PeakMemory`, the peak resident memory of a block.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.diagnostics.importance import heldout_elpd
from scalabl_pyro.experiments.comparison.cells import _save_cell
from scalabl_pyro.experiments.comparison.config import CHECKPOINT_DIR, RECIPES, CompareConfig
from scalabl_pyro.experiments.comparison.results import FamilyResult
from scalabl_pyro.program.guides import count_free_parameters, guide_covariance


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
    """Fit one (family, seed), predict the report questions, diagnose q, and save the cell."""
    from pyro.infer.autoguide import AutoDelta

    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.diagnostics.fits import layer_names
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
    seconds = {
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "diag_seconds": diag_seconds,
    }
    row, arrays = _measure(sbl, family, seed, cfg, pred, diag, history, cov_init, seconds)
    row.update({"num_train": len(train), "num_report": len(report)})
    row["num_samples"] = pred.num_samples
    row["threads"] = torch.get_num_threads()
    result = FamilyResult(family, seed, row, history.to_dict(), layer_names(sbl.model), arrays)
    _save_cell(cell_dir, result, cfg)
    del sbl
    return result


def _measure(
    sbl: Any,
    family: str,
    seed: int,
    cfg: CompareConfig,
    pred: Any,
    diag: Any,
    history: Any,
    cov_init: np.ndarray | None,
    seconds: dict[str, float],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The row of scalars and the arrays of one fitted family (draws, correlations, prior)."""
    from scalabl_pyro.diagnostics.fits import prior_draws

    point_mass = diag is None
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
        **seconds,
        "diag_draws": cfg.diag_samples,
    }
    return row, _family_arrays(pred, draws, diag, corr, prior)


def _family_arrays(
    pred: Any, draws: np.ndarray, diag: Any, corr: np.ndarray | None, prior: np.ndarray | None
) -> dict[str, np.ndarray]:
    """What a cell stores beside its row: draws, held-out predictions, diagnostics' arrays."""
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
    return arrays


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
