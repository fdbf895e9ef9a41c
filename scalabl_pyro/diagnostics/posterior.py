"""ArviZ diagnostics of a fitted ScalaBL posterior.

ArviZ has no converter for SVI, so :func:`to_inference_data` builds the
``InferenceData`` itself (``az.from_dict``) from the library's own
``Predictive`` path:

========================  ==========================================  ========================
group                     content                                     dims
========================  ==========================================  ========================
``posterior``             ``s``: draws of every layer's latent        chain, draw, layer, rank
                          (``predict.draw_latents``)
``prior``                 ``s``: draws of the prior of each site      chain, draw, layer, rank
``log_likelihood``        ``obs``: log p(y_i | x_i, s) per draw       chain, draw, example
                          (``predict.predict`` with those draws)
``posterior_predictive``  ``obs``: y_i ~ p(y | x_i, s) per draw       chain, draw, example
``observed_data``         ``obs``: the labels                         example
``sample_stats``          ``elbo``, ``nll``, ``kl``, ``kl_weight``    chain, step;
                          (training history); ``log_weight`` (below)  chain, draw
========================  ==========================================  ========================

``layer`` coordinates are the module paths of the adapted layers (site
``s.<path>``). Several independent fits (seeds) become chains
(``to_inference_data([fit_a, fit_b])`` or :func:`combine_chains`): R-hat and
ESS then measure how well independent runs agree, not MCMC mixing.

**Importance diagnostics** (:func:`diagnose`; the maths is in
:mod:`scalabl_pyro.diagnostics.importance`). With S draws of q and the log-likelihood of
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

``to_inference_data(fit, train)`` stores the training log-likelihoods in
``log_likelihood`` and the log importance weights ``log w_s`` in
``sample_stats.log_weight`` (chain, draw). ``az.loo`` on that object treats
the draws as exact posterior draws; :func:`loo` applies the correction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import arviz as az
import numpy as np
import torch
import xarray as xr
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuide

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.diagnostics.importance import (
    KHAT_OK,
    MIN_KHAT_SAMPLES,
    ElpdResult,
    ParetoK,
    difference_log_lik_sum,
    heldout_elpd,
    khat_of_q,
    pareto_k_from_log_weights,
    psis_loo_of_q,
)
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.predict import predict
from scalabl_pyro.program.adapters import SITE_PREFIX
from scalabl_pyro.program.formats import TaskFormat
from scalabl_pyro.program.model import ScalaBLModel, pyro_settings
from scalabl_pyro.utils.rng import model_devices, seeded

#: Variable name of the latents in ``posterior`` / ``prior``.
LATENT_VAR = "s"
#: Variable name of the labels in ``log_likelihood`` / ``posterior_predictive`` / ``observed_data``.
OBS_VAR = "obs"

_HISTORY_KEYS = {"elbo": "loss", "nll": "nll", "kl": "kl", "kl_weight": "kl_weight"}


@dataclass
class Fit:
    """One fitted posterior: the Pyro model and guide, how to encode data, its history.

    ``fmt`` (a fixed task format) or ``format_fn`` (data -> format, e.g.
    ``ScalaBL.format_for``) is needed only to score data.
    """

    model: ScalaBLModel
    guide: AutoGuide
    fmt: TaskFormat | None = None
    history: Any = None  # TrainHistory, its to_dict(), or None
    device: torch.device | str = "cpu"
    format_fn: Callable[[MCDataset], TaskFormat] | None = None

    def format_for(self, data: MCDataset) -> TaskFormat:
        """The task format used to encode ``data``."""
        if self.fmt is not None:
            return self.fmt
        if self.format_fn is not None:
            return self.format_fn(data)
        raise ScalaBLError(
            "a (model, guide) fit needs a task format to score data; pass fmt=... "
            "or a ScalaBL object"
        )


def as_fit(obj: Any, *, fmt: TaskFormat | None = None, history: Any = None) -> Fit:
    """A :class:`Fit` from a ScalaBL object, a ``(model, guide)`` pair or a Fit."""
    if isinstance(obj, Fit):
        return obj
    if hasattr(obj, "model") and hasattr(obj, "guide") and hasattr(obj, "format_for"):
        hist = history if history is not None else obj.history
        return Fit(obj.model, obj.guide, fmt, hist, obj.device, obj.format_for)
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], ScalaBLModel):
        device = next(obj[0].lm.parameters()).device
        return Fit(obj[0], obj[1], fmt, history, device)
    raise ScalaBLError(
        f"cannot read a fit from {type(obj).__name__}; pass a ScalaBL, a (model, guide) pair "
        "or a list of them"
    )


def layer_names(model: ScalaBLModel) -> list[str]:
    """The module path of each latent site (the ``layer`` coordinates), in site order."""
    return [n[len(SITE_PREFIX) :] if n.startswith(SITE_PREFIX) else n for n in model.site_names]


def _stack_sites(model: ScalaBLModel, draws: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Per-site (S, r) draws -> (S, L, r) float64 in site order."""
    return np.stack([draws[n].detach().cpu().double().numpy() for n in model.site_names], axis=1)


@torch.no_grad()
def prior_draws(model: ScalaBLModel, num_samples: int, seed: int | None = 0) -> np.ndarray | None:
    """(S, L, r) draws of each site's own prior (its loc and scale); None for a flat prior."""
    if model.prior_scale is None:
        return None
    with seeded(seed):
        out = {n: model.prior(n).sample((num_samples,)).cpu() for n in model.site_names}
    return _stack_sites(model, out)


def history_arrays(history: Any) -> dict[str, np.ndarray]:
    """ELBO terms per step: ``elbo`` (the loss, i.e. -ELBO), ``nll``, ``kl``, ``kl_weight``.

    ``elbo`` holds the training loss as recorded (the negative ELBO at
    data-set scale for the ``elbo`` objective), ``nll`` the mean per-example
    NLL of the batch, ``kl`` the (weighted) KL term.
    """
    if history is None:
        return {}
    h = history.to_dict() if hasattr(history, "to_dict") else history
    steps = h.get("steps", []) if isinstance(h, Mapping) else []
    if not steps:
        return {}
    out = {"step": np.array([r["step"] for r in steps], dtype=np.int64)}
    for key, src in _HISTORY_KEYS.items():
        out[key] = np.array([float(r.get(src, math.nan)) for r in steps], dtype=np.float64)
    return out


def inference_data_from_arrays(
    posterior: np.ndarray,
    layers: Sequence[str],
    *,
    prior: np.ndarray | None = None,
    log_likelihood: np.ndarray | None = None,
    posterior_predictive: np.ndarray | None = None,
    observed: np.ndarray | None = None,
    histories: Sequence[Mapping[str, np.ndarray]] | None = None,
    log_weights: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> az.InferenceData:
    """Assemble the InferenceData from arrays with a leading (chain, draw) shape.

    ``posterior``/``prior``: (chain, draw, L, r); ``log_likelihood`` and
    ``posterior_predictive``: (chain, draw, N); ``observed``: (N,);
    ``histories``: one :func:`history_arrays` dict per chain (equal lengths
    are stacked into ``sample_stats``; chains without history are skipped);
    ``log_weights``: (chain, draw) log importance weights of q, stored as
    ``sample_stats.log_weight``.
    """
    if posterior.ndim != 4 or posterior.shape[2] != len(layers):
        raise ScalaBLError(
            f"posterior draws have shape {posterior.shape}; expected (chain, draw, "
            f"{len(layers)} layers, rank)"
        )
    coords: dict[str, Any] = {
        "layer": list(layers),
        "rank": np.arange(posterior.shape[3]),
    }
    dims: dict[str, list[str]] = {LATENT_VAR: ["layer", "rank"]}
    kwargs: dict[str, Any] = {"posterior": {LATENT_VAR: posterior}}
    if prior is not None:
        kwargs["prior"] = {LATENT_VAR: prior}
    if log_likelihood is not None or observed is not None or posterior_predictive is not None:
        n = next(
            a.shape[-1] for a in (log_likelihood, posterior_predictive, observed) if a is not None
        )
        coords["example"] = np.arange(n)
        dims[OBS_VAR] = ["example"]
    if log_likelihood is not None:
        kwargs["log_likelihood"] = {OBS_VAR: log_likelihood}
    if posterior_predictive is not None:
        kwargs["posterior_predictive"] = {OBS_VAR: posterior_predictive}
    if observed is not None:
        kwargs["observed_data"] = {OBS_VAR: observed}
    idata = az.from_dict(**kwargs, coords=coords, dims=dims, attrs=dict(attrs or {}))
    stats = _sample_stats(histories)
    if log_weights is not None:
        lw = xr.Dataset(
            {"log_weight": (("chain", "draw"), np.asarray(log_weights, dtype=np.float64))},
            coords={"chain": np.arange(posterior.shape[0]), "draw": np.arange(posterior.shape[1])},
        )
        stats = lw if stats is None else xr.merge([stats, lw])
    if stats is not None:
        idata.add_groups(sample_stats=stats)
    return idata


def _sample_stats(histories: Sequence[Mapping[str, np.ndarray]] | None) -> xr.Dataset | None:
    """Training histories as a (chain, step) Dataset; None if they are missing or ragged."""
    if not histories or any(not h for h in histories):
        return None
    lengths = {len(h["step"]) for h in histories}
    if len(lengths) != 1:
        return None
    data = {
        key: (("chain", "step"), np.stack([h[key] for h in histories])) for key in _HISTORY_KEYS
    }
    return xr.Dataset(
        data, coords={"chain": np.arange(len(histories)), "step": histories[0]["step"]}
    )


def _sample_labels(sample_log_probs: np.ndarray, seed: int | None) -> np.ndarray:
    """One label per (draw, example) from p(y | x, s): (S, N, C) log-probs -> (S, N) ints."""
    rng = np.random.default_rng(seed)
    p = np.exp(sample_log_probs)
    cum = np.cumsum(p, axis=-1)
    u = rng.random(p.shape[:-1])[..., None] * cum[..., -1:]
    return np.minimum((u > cum).sum(axis=-1), p.shape[-1] - 1).astype(np.int64)


def to_inference_data(
    fits: Any,
    data: MCDataset | None = None,
    *,
    num_samples: int = 100,
    seed: int = 0,
    fmt: TaskFormat | None = None,
    history: Any = None,
    batch_size: int = 8,
    max_rows: int = 256,
    progress: bool = False,
) -> az.InferenceData:
    """An ArviZ ``InferenceData`` of one fit, or of several fits as chains.

    ``fits``: a ScalaBL, a ``(model, guide)`` pair (then ``fmt`` is needed
    to score ``data``), or a list of them (one chain each; chain ``c`` draws
    with seed ``seed + c``). With ``data`` the ``log_likelihood``,
    ``posterior_predictive`` and ``observed_data`` groups are filled by
    running the model on it under each draw (S x N log-likelihoods: costs S
    model passes over ``data``, batched like ``predict``). Pass the training
    questions the fit conditioned on: ``sample_stats.log_weight`` then holds
    each draw's log importance weight ``log p(s) + sum_i log p(y_i | s) -
    log q(s)`` and :func:`loo` gives PSIS-LOO corrected for q (for held-out
    questions use :func:`diagnose`, whose ``heldout`` is the BMA's elpd).
    ``history`` overrides the fit's training history (a ScalaBL carries its
    own) in ``sample_stats``.
    """
    items = list(fits) if isinstance(fits, list) else [fits]
    if not items:
        raise ScalaBLError("no fits given; pass a ScalaBL or a list of them")
    fit_list = [as_fit(f, fmt=fmt, history=history) for f in items]
    layers = layer_names(fit_list[0].model)
    for f in fit_list[1:]:
        if layer_names(f.model) != layers:
            raise ScalaBLError(
                "the fits have different latent sites; combine only fits of the same base "
                "model and targets as chains"
            )
    post, prior, ll, pp, hist, lws = [], [], [], [], [], []
    observed = None
    for c, f in enumerate(fit_list):
        chain_seed = seed + c
        log_q = None
        if isinstance(f.guide, AutoDelta):
            point = {k: v[None].expand(num_samples, -1) for k, v in _guide_point(f.guide).items()}
            draws = {k: point[k] for k in f.model.site_names}
        else:
            draws, log_q = guide_draws_with_log_q(f.model, f.guide, num_samples, chain_seed)
        post.append(_stack_sites(f.model, draws))
        prior.append(prior_draws(f.model, num_samples, chain_seed + 7919))
        hist.append(history_arrays(f.history))
        if data is not None:
            pred = _predict_under(f, data, draws, chain_seed, batch_size, max_rows, progress)
            ll.append(pred.log_likelihood())
            pp.append(_sample_labels(pred.sample_log_probs, chain_seed))
            observed = pred.labels.astype(np.int64)
            if log_q is not None and f.model.prior_scale is not None:
                lws.append(log_prior(f.model, draws) + ll[-1].sum(axis=1) - log_q)
    has_prior = all(p is not None for p in prior)
    return inference_data_from_arrays(
        np.stack(post),
        layers,
        prior=np.stack(prior) if has_prior else None,
        log_likelihood=np.stack(ll) if ll else None,
        posterior_predictive=np.stack(pp) if pp else None,
        observed=observed,
        histories=hist,
        log_weights=np.stack(lws) if ll and len(lws) == len(fit_list) else None,
        attrs={"num_chains": len(fit_list), "seed": seed},
    )


def loo(idata: az.InferenceData, chain: int = 0) -> ElpdResult:
    """PSIS-LOO of one chain of :func:`to_inference_data` (built on the training questions).

    Uses ``log_likelihood.obs`` and ``sample_stats.log_weight``: the
    importance ratios carry the correction from q to the posterior. Chains
    are separate fits (each with its own target), so LOO is per chain.
    """
    if "log_likelihood" not in idata.groups():
        raise ScalaBLError(
            "the InferenceData has no log_likelihood; build it with to_inference_data(fit, train)"
        )
    stats = getattr(idata, "sample_stats", None)
    if stats is None or "log_weight" not in stats:
        raise ScalaBLError(
            "the InferenceData has no sample_stats.log_weight (a point-mass fit, or one built "
            "without data); LOO of q needs a Gaussian guide and to_inference_data(fit, train)"
        )
    ll = idata.log_likelihood[OBS_VAR].isel(chain=chain).values
    lw = stats["log_weight"].isel(chain=chain).values
    return psis_loo_of_q(ll, lw)


def _guide_point(guide: AutoGuide) -> dict[str, torch.Tensor]:
    with pyro_settings(), torch.no_grad():
        return {k: v.detach() for k, v in guide.median().items() if k.startswith(SITE_PREFIX)}


def combine_chains(idatas: Sequence[az.InferenceData]) -> az.InferenceData:
    """Several single-fit InferenceData (e.g. seeds) as one with a chain per fit.

    Groups with a ``chain`` dimension are concatenated along it (renumbered
    0..K-1); ``observed_data`` is taken from the first. Draw counts must match.
    """
    if len(idatas) < 1:
        raise ScalaBLError("no InferenceData to combine; pass a list of them")
    first = idatas[0]
    groups = {}
    for group in first.groups():
        parts = [getattr(i, group, None) for i in idatas]
        if any(p is None for p in parts):
            raise ScalaBLError(
                f"group {group!r} is missing from some of the InferenceData; build them all "
                "with the same data and options"
            )
        if "chain" not in parts[0].dims:
            groups[group] = parts[0]
            continue
        try:
            joined = xr.concat(parts, dim="chain", join="exact")
        except ValueError as e:
            raise ScalaBLError(
                f"group {group!r} does not line up across the InferenceData ({e}); use the "
                "same number of draws, layers and examples for every fit"
            ) from None
        groups[group] = joined.assign_coords(chain=np.arange(joined.sizes["chain"]))
    return az.InferenceData(**groups)


# ----------------------------------------------------------------- importance diagnostics


@torch.no_grad()
def guide_draws_with_log_q(
    model: ScalaBLModel, guide: AutoGuide, num_samples: int, seed: int | None = 0
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """S draws from the guide (each site (S, r)) and log q of each (S,), from guide traces.

    ``log q`` sums the log densities of every sample site of the guide trace
    (auxiliary latents included, with Pyro's Jacobian terms on the Delta
    sites): the same quantity the ELBO uses, exact for every family.
    """
    if num_samples < 1:
        raise ScalaBLError(f"num_samples must be >= 1, got {num_samples}")
    values: dict[str, list[torch.Tensor]] = {n: [] for n in model.site_names}
    log_q = np.empty(num_samples)
    with pyro_settings(), seeded(seed, model_devices(model.lm)):
        for i in range(num_samples):
            tr = poutine.trace(guide).get_trace()
            tr.compute_log_prob()
            total = 0.0
            for site in tr.nodes.values():
                if site["type"] == "sample" and not site["is_observed"]:
                    total += float(site["log_prob_sum"])
            log_q[i] = total
            for n in model.site_names:
                values[n].append(tr.nodes[n]["value"].detach().reshape(-1))
    return {n: torch.stack(v) for n, v in values.items()}, log_q


def log_prior(model: ScalaBLModel, draws: Mapping[str, torch.Tensor]) -> np.ndarray:
    """sum_l log p(s_l) per draw, (S,)."""
    total = None
    for n in model.site_names:
        lp = model.prior(n).log_prob(draws[n].to(model.prior(n).mean.device)).cpu().double()
        total = lp if total is None else total + lp
    assert total is not None
    return total.numpy()


def _flat(model: ScalaBLModel, draws: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Per-site (S, r) draws -> (S, D) float64 in site order."""
    return np.concatenate(
        [
            draws[n].detach().cpu().double().reshape(draws[n].shape[0], -1).numpy()
            for n in model.site_names
        ],
        axis=1,
    )


def _check_density(f: Fit, what: str) -> None:
    if isinstance(f.guide, AutoDelta):
        raise ScalaBLError(
            f"a point-mass guide (delta/mle) has no density, so {what} is undefined; "
            "use a Gaussian guide family"
        )
    if f.model.prior_scale is None:
        raise ScalaBLError(f"{what} needs a prior (log p(s)); set prior_scale > 0")


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


__all__ = [
    "ElpdResult",
    "Fit",
    "PosteriorDiagnostics",
    "diagnose",
    "loo",
    "point_log_lik_and_grads",
    "KHAT_OK",
    "LATENT_VAR",
    "MIN_KHAT_SAMPLES",
    "OBS_VAR",
    "ParetoK",
    "as_fit",
    "combine_chains",
    "guide_draws_with_log_q",
    "history_arrays",
    "inference_data_from_arrays",
    "layer_names",
    "log_prior",
    "pareto_k_from_log_weights",
    "pareto_k_of_q",
    "prior_draws",
    "to_inference_data",
]


def _predict_under(f, data, draws, seed, batch_size, max_rows, progress):
    """The fit's predictive on ``data`` with the latents fixed to ``draws`` (S per site)."""
    return predict(
        f.model,
        f.guide,
        f.format_for(data),
        data,
        latents=draws,
        batch_size=batch_size,
        max_rows=max_rows,
        seed=seed,
        device=f.device,
        progress=progress,
    )
