"""k-hat of q, PSIS-LOO of the training questions and held-out elpd of one fit.

:func:`diagnose` runs them; the maths on arrays is in
:mod:`scalabl_pyro.diagnostics.importance`. With S draws of q and the log-likelihood of
**every** training question under each draw (the S x N matrix), k-hat of q
compares q with the posterior p(s | D, A, B) it approximates (Yao et al.
2018), and PSIS-LOO of the training questions uses the same matrix with the
ratios corrected for q (log r_is = log w_s - log p(y_i | s_s)). Above
``exact_limit`` questions the per-draw likelihood sum comes from the
difference estimator of Magnusson et al. (2019), with its standard error.
Held-out questions get the BMA's elpd with its standard error (nothing is
left out of data the posterior never saw). ``log q`` is the guide trace's own
log density (what the ELBO uses), exact for every family. The LoRA factors A
and B are point estimates: the diagnostics are of q(s) against p(s | D, A, B).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.diagnostics.fits import (
    Fit,
    _check_density,
    _flat,
    _guide_point,
    _predict_under,
    _stack_sites,
    as_fit,
    guide_draws_with_log_q,
    log_prior,
)
from scalabl_pyro.diagnostics.importance import (
    MIN_KHAT_SAMPLES,
    ElpdResult,
    ParetoK,
    difference_log_lik_sum,
    heldout_elpd,
    khat_of_q,
    psis_loo_of_q,
)
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.formats import TaskFormat
from scalabl_pyro.program.model import pyro_settings


def point_log_lik_and_grads(
    fit: Any,
    data: MCDataset,
    point: Mapping[str, torch.Tensor],
    *,
    per_example: bool,
    batch_size: int = 8,
    fmt: TaskFormat | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """log p(y_i | x_i, s = point) of every example (N,) and its gradient in s.

    ``per_example``: gradients (N, D) one per example (one backward pass per
    example), else their sum (D,) from one backward pass per batch. D runs
    over the latent sites in site order. The model runs in eval mode.
    """
    f = as_fit(fit, fmt=fmt)
    model = f.model
    encoder = f.format_for(data)
    was_training = model.training
    model.eval()
    lls: list[np.ndarray] = []
    grads: list[np.ndarray] = []
    try:
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            batch = encoder.encode([data[i] for i in idx], indices=idx).to(f.device)
            lat = {
                k: point[k].detach().to(f.device).clone().requires_grad_(True)
                for k in model.site_names
            }
            with torch.enable_grad(), pyro_settings():
                scores = model.scores(batch, lat)
                logp = torch.log_softmax(scores.double(), dim=-1)
                ll = logp.gather(-1, batch.labels.to(logp.device)[:, None])[:, 0]
                inputs = [lat[k] for k in model.site_names]
                if per_example:
                    for j in range(ll.shape[0]):
                        g = torch.autograd.grad(ll[j], inputs, retain_graph=True)
                        grads.append(torch.cat([x.reshape(-1) for x in g]).double().cpu().numpy())
                else:
                    g = torch.autograd.grad(ll.sum(), inputs)
                    grads.append(torch.cat([x.reshape(-1) for x in g]).double().cpu().numpy())
            lls.append(ll.detach().cpu().numpy())
    finally:
        model.train(was_training)
    ll_all = np.concatenate(lls)
    return ll_all, (np.stack(grads) if per_example else np.sum(grads, axis=0))


@dataclass
class PosteriorDiagnostics:
    """k-hat of q, PSIS-LOO on the training questions and held-out elpd of one fit.

    ``train_log_lik`` is the (S, n) matrix behind them: every training
    question (``khat.estimator == "exact"``) or the residual subsample of the
    difference estimator (then LOO is computed on those n questions and
    scaled to N).
    """

    khat: ParetoK
    loo: ElpdResult
    heldout: ElpdResult | None
    draws: np.ndarray  # (S, L, r)
    log_q: np.ndarray  # (S,)
    log_prior: np.ndarray  # (S,)
    train_log_lik: np.ndarray  # (S, n)
    train_indices: np.ndarray  # (n,) which training questions the matrix covers
    heldout_sample_log_probs: np.ndarray | None = None  # (S_h, N_h, C)
    heldout_labels: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """Scalars for tables and JSON (no infinities)."""
        out: dict[str, Any] = {"khat_q": self.khat.to_dict(), "loo": self.loo.to_dict()}
        if self.heldout is not None:
            out["heldout"] = self.heldout.to_dict()
        return out


def _train_log_lik(
    f: Fit,
    train: MCDataset,
    draws: dict[str, torch.Tensor],
    *,
    exact_limit: int,
    subsample_size: int,
    seed: int,
    batch_size: int,
    max_rows: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, float]:
    """(S, n) training log-likelihoods, their indices, per-draw sums over all N, estimator, SE."""
    n_total = len(train)
    if n_total <= exact_limit:
        pred = _predict_under(f, train, draws, seed, batch_size, max_rows, progress)
        ll = pred.log_likelihood()
        return ll, np.arange(n_total), ll.sum(axis=1), "exact", 0.0
    m = min(int(subsample_size), n_total)
    if m < 2:
        raise ScalaBLError(f"subsample_size must be >= 2 for the difference estimator, got {m}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n_total, size=m, replace=False))
    sub = _pick(train, idx)
    point = {k: v.to(f.device) for k, v in _guide_point(f.guide).items()}
    pt_ll, total_grad = point_log_lik_and_grads(
        f, train, point, per_example=False, batch_size=batch_size
    )
    sub_pt_ll, sub_grads = point_log_lik_and_grads(
        f, sub, point, per_example=True, batch_size=batch_size
    )
    sub_ll = _predict_under(f, sub, draws, seed, batch_size, max_rows, progress).log_likelihood()
    flat_point = _flat(f.model, {k: v[None] for k, v in point.items()})[0]
    estimate, se = difference_log_lik_sum(
        _flat(f.model, draws),
        flat_point,
        float(pt_ll.sum()),
        total_grad,
        sub_ll,
        sub_pt_ll,
        sub_grads,
        n_total,
    )
    return sub_ll, idx, estimate, "difference", float(np.mean(se))


def _pick(data: MCDataset, idx: np.ndarray) -> MCDataset:
    import dataclasses

    return dataclasses.replace(data, examples=[data.examples[int(i)] for i in idx])


def diagnose(
    fit: Any,
    train: MCDataset,
    heldout: MCDataset | None = None,
    *,
    num_samples: int = 100,
    heldout_samples: int = 10,
    exact_limit: int = 512,
    subsample_size: int = 128,
    seed: int = 0,
    fmt: TaskFormat | None = None,
    batch_size: int = 8,
    max_rows: int = 256,
    progress: bool = False,
) -> PosteriorDiagnostics:
    """k-hat of q and PSIS-LOO on ``train`` (the questions q was fitted to), elpd on ``heldout``.

    ``num_samples`` draws of q score every training question (the (S, N)
    matrix) when N <= ``exact_limit``; above it the likelihood sum of each
    draw comes from the difference estimator (a Taylor surrogate over all N
    plus ``subsample_size`` scored residuals) and LOO runs on that
    subsample. ``heldout`` is scored by the BMA over the first
    ``heldout_samples`` draws (the predictive a user deploys).
    """
    f = as_fit(fit, fmt=fmt)
    _check_density(f, "k-hat of q")
    if num_samples < MIN_KHAT_SAMPLES:
        raise ScalaBLError(
            f"k-hat and PSIS-LOO need at least {MIN_KHAT_SAMPLES} draws (PSIS fits the largest "
            f"20 % of the weights), got {num_samples}; use the default 100"
        )
    if len(train) == 0:
        raise ScalaBLError("the training set is empty; pass the questions the fit was trained on")
    draws, log_q = guide_draws_with_log_q(f.model, f.guide, num_samples, seed)
    lp = log_prior(f.model, draws)
    ll, idx, ll_sum, estimator, se = _train_log_lik(
        f,
        train,
        draws,
        exact_limit=exact_limit,
        subsample_size=subsample_size,
        seed=seed,
        batch_size=batch_size,
        max_rows=max_rows,
        progress=progress,
    )
    pk = khat_of_q(
        ll_sum,
        lp,
        log_q,
        num_data=len(train),
        estimator=estimator,
        subsample_size=None if estimator == "exact" else ll.shape[1],
        log_lik_se=se,
    )
    loo = psis_loo_of_q(ll, pk.log_weights)
    if estimator != "exact":
        loo = _scale_subsample(loo, len(train))
    held = slp = labels = None
    if heldout is not None:
        k = max(1, min(int(heldout_samples), num_samples))
        sub_draws = {n: v[:k] for n, v in draws.items()}
        pred = _predict_under(f, heldout, sub_draws, seed, batch_size, max_rows, progress)
        held = heldout_elpd(pred.log_likelihood())
        slp, labels = pred.sample_log_probs, pred.labels
    return PosteriorDiagnostics(
        pk, loo, held, _stack_sites(f.model, draws), log_q, lp, ll, idx, slp, labels
    )


def _scale_subsample(loo: ElpdResult, num_data: int) -> ElpdResult:
    """LOO of a simple random subsample of n questions, as an estimate for all N."""
    n = loo.num_data
    mean = float(np.mean(loo.pointwise))
    sd = float(np.std(loo.pointwise, ddof=1)) if n > 1 else float("inf")
    loo.extra.update({"subsample_size": n, "subsample_elpd": loo.elpd})
    loo.elpd = num_data * mean
    loo.se = num_data * sd * math.sqrt(max(0.0, 1 - n / num_data) / n + 1 / num_data)
    return loo


def pareto_k_of_q(fit: Any, data: MCDataset, **kwargs: Any) -> ParetoK:
    """k-hat of q against p(s | ``data``), ``data`` being all the training questions.

    The ``khat`` of :func:`diagnose` (same keyword arguments; no held-out
    set); the maths is in :mod:`scalabl_pyro.diagnostics.importance`.
    """
    return diagnose(fit, data, **kwargs).khat
