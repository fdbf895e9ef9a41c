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

``to_inference_data(fit, train)`` stores the training log-likelihoods in
``log_likelihood`` and the log importance weights ``log w_s`` in
``sample_stats.log_weight`` (chain, draw). ``az.loo`` on that object treats
the draws as exact posterior draws; :func:`loo` applies the correction.

The fitted posterior as the diagnostics read it (draws, densities, the predictive
under fixed draws) is :mod:`scalabl_pyro.diagnostics.fits`; k-hat of q, PSIS-LOO
and held-out elpd of one fit are :mod:`scalabl_pyro.diagnostics.khat`. Their public
names are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import arviz as az
import numpy as np
import xarray as xr
from pyro.infer.autoguide import AutoDelta

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.diagnostics.fits import (
    Fit,
    _guide_point,
    _predict_under,
    _stack_sites,
    as_fit,
    guide_draws_with_log_q,
    layer_names,
    log_prior,
    prior_draws,
)
from scalabl_pyro.diagnostics.importance import (
    KHAT_OK,
    MIN_KHAT_SAMPLES,
    ElpdResult,
    ParetoK,
    pareto_k_from_log_weights,
    psis_loo_of_q,
)
from scalabl_pyro.diagnostics.khat import (
    PosteriorDiagnostics,
    diagnose,
    pareto_k_of_q,
    point_log_lik_and_grads,
)
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.formats import TaskFormat

#: Variable name of the latents in ``posterior`` / ``prior``.
LATENT_VAR = "s"


#: Variable name of the labels in ``log_likelihood`` / ``posterior_predictive`` / ``observed_data``.
OBS_VAR = "obs"


_HISTORY_KEYS = {"elbo": "loss", "nll": "nll", "kl": "kl", "kl_weight": "kl_weight"}


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
