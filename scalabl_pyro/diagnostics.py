"""ArviZ diagnostics of a fitted ScalaBL posterior.

ArviZ has no converter for SVI, so :func:`to_inference_data` builds the
``InferenceData`` itself (``az.from_dict``) from the library's own
``Predictive`` path:

=====================  ==========================================  =======================
group                  content                                     dims
=====================  ==========================================  =======================
``posterior``          ``s``: draws of every layer's latent        chain, draw, layer, rank
                       (``predict.draw_latents``)
``prior``              ``s``: draws of the prior of each site      chain, draw, layer, rank
``log_likelihood``     ``obs``: log p(y_i | x_i, s) per draw       chain, draw, example
                       (``predict.predict`` with those draws)
``posterior_predictive`` ``obs``: y_i ~ p(y | x_i, s) per draw     chain, draw, example
``observed_data``      ``obs``: the labels                         example
``sample_stats``       ``elbo``, ``nll``, ``kl``, ``kl_weight``:   chain, step
                       the training history
=====================  ==========================================  =======================

``layer`` coordinates are the module paths of the adapted layers (site
``s.<path>``). Several independent fits (seeds) become chains
(``to_inference_data([fit_a, fit_b])`` or :func:`combine_chains`): R-hat and
ESS then measure how well independent runs agree, not MCMC mixing.

**Pareto-k of q** (Yao, Vehtari, Simpson, Gelman 2018, "Yes, but did it
work?"): importance ratios of the joint over the approximation,

    log w_s = (N / n) sum_{i in subset} log p(y_i | x_i, s_s) + log p(s_s) - log q(s_s),
    s_s ~ q,

where the likelihood of the N training examples is estimated from a random
subset of n (scaled by N / n: an unbiased estimate of the log-likelihood,
whose noise adds to the spread of log w, so k-hat is if anything
pessimistic). ``az.psislw`` fits a generalised Pareto to the largest
weights; k-hat < 0.7 means q is usable for importance sampling (and its
expectations can be trusted), k-hat > 0.7 that the weights have too heavy a
tail. ``log q`` is the guide trace's own log density (what the ELBO uses),
so it is exact for every family. The LoRA factors A and B are point
estimates: the diagnostic is of q(s) against p(s | D, A, B).
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

from scalabl_pyro.adapters import SITE_PREFIX
from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.formats import TaskFormat
from scalabl_pyro.model import ScalaBLModel, pyro_settings
from scalabl_pyro.predict import draw_latents, predict
from scalabl_pyro.rng import model_devices, seeded

#: Variable name of the latents in ``posterior`` / ``prior``.
LATENT_VAR = "s"
#: Variable name of the labels in ``log_likelihood`` / ``posterior_predictive`` / ``observed_data``.
OBS_VAR = "obs"
#: Usable-approximation threshold of k-hat (Yao et al. 2018).
KHAT_OK = 0.7
#: Fewest draws for which ``az.psislw`` fits a tail (it needs more than 4 tail weights).
MIN_KHAT_SAMPLES = 25

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
    attrs: Mapping[str, Any] | None = None,
) -> az.InferenceData:
    """Assemble the InferenceData from arrays with a leading (chain, draw) shape.

    ``posterior``/``prior``: (chain, draw, L, r); ``log_likelihood`` and
    ``posterior_predictive``: (chain, draw, N); ``observed``: (N,);
    ``histories``: one :func:`history_arrays` dict per chain (equal lengths
    are stacked into ``sample_stats``; chains without history are skipped).
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
    model passes over ``data``). ``history`` overrides the fit's training
    history (a ScalaBL carries its own) in ``sample_stats``.
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
    post, prior, ll, pp, hist = [], [], [], [], []
    observed = None
    for c, f in enumerate(fit_list):
        chain_seed = seed + c
        if isinstance(f.guide, AutoDelta):
            point = {k: v[None].expand(num_samples, -1) for k, v in _guide_point(f.guide).items()}
            draws = {k: point[k] for k in f.model.site_names}
        else:
            draws = draw_latents(f.model, f.guide, num_samples, chain_seed)
        post.append(_stack_sites(f.model, draws))
        prior.append(prior_draws(f.model, num_samples, chain_seed + 7919))
        hist.append(history_arrays(f.history))
        if data is not None:
            pred = _predict_under(f, data, draws, chain_seed, batch_size, max_rows, progress)
            ll.append(pred.log_likelihood())
            pp.append(_sample_labels(pred.sample_log_probs, chain_seed))
            observed = pred.labels.astype(np.int64)
    has_prior = all(p is not None for p in prior)
    return inference_data_from_arrays(
        np.stack(post),
        layers,
        prior=np.stack(prior) if has_prior else None,
        log_likelihood=np.stack(ll) if ll else None,
        posterior_predictive=np.stack(pp) if pp else None,
        observed=observed,
        histories=hist,
        attrs={"num_chains": len(fit_list), "seed": seed},
    )


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


# ----------------------------------------------------------------- Pareto-k of q


@dataclass
class ParetoK:
    """k-hat of the importance ratios p(D, s) / q(s) and what it came from."""

    khat: float
    log_weights: np.ndarray  # (S,) raw log w
    smoothed_log_weights: np.ndarray  # (S,) PSIS-smoothed, normalised
    num_data: int  # N, the likelihood's data-set size
    subset_size: int  # n examples whose log-likelihood was scaled by N / n

    @property
    def usable(self) -> bool:
        """k-hat < 0.7 (Yao et al. 2018)."""
        return bool(self.khat < KHAT_OK)

    @property
    def ess(self) -> float:
        """Effective sample size 1 / sum w^2 of the smoothed, normalised weights."""
        w = np.exp(self.smoothed_log_weights)
        return float(1.0 / np.sum(w**2))

    def to_dict(self) -> dict[str, float]:
        """Scalars for tables."""
        return {
            "khat": self.khat,
            "ess": self.ess,
            "num_draws": int(self.log_weights.shape[0]),
            "subset_size": self.subset_size,
            "num_data": self.num_data,
        }


def pareto_k_from_log_weights(log_weights: np.ndarray) -> tuple[float, np.ndarray]:
    """(k-hat, smoothed normalised log weights) of raw log importance weights (``az.psislw``).

    Exactly constant weights (q equal to the target up to a constant) have
    no tail to fit; k-hat is reported as -inf.
    """
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.size < 2 or not np.all(np.isfinite(lw)):
        raise ScalaBLError(
            f"need at least 2 finite log weights, got {lw.size} with "
            f"{int(np.sum(~np.isfinite(lw)))} non-finite; draw more samples"
        )
    if np.ptp(lw) == 0.0:
        return float("-inf"), np.full_like(lw, -math.log(lw.size))
    smoothed, k = az.psislw(lw.copy())
    return float(k), np.asarray(smoothed)


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


def pareto_k_of_q(
    fit: Any,
    data: MCDataset,
    *,
    num_samples: int = 64,
    subset_size: int | None = 32,
    num_data: int | None = None,
    seed: int = 0,
    fmt: TaskFormat | None = None,
    batch_size: int = 8,
    max_rows: int = 256,
    progress: bool = False,
) -> ParetoK:
    """k-hat of the variational approximation on the training data ``data`` (module docstring).

    ``subset_size`` examples of ``data`` (all if None or larger) are drawn
    with ``seed``; their log-likelihood sum is scaled by ``N / n`` with N =
    ``num_data`` (default ``len(data)``). Point-mass guides and flat priors
    have no density ratio: that is an error.
    """
    f = as_fit(fit, fmt=fmt)
    if num_samples < MIN_KHAT_SAMPLES:
        raise ScalaBLError(
            f"Pareto-k needs at least {MIN_KHAT_SAMPLES} draws (PSIS fits the largest 20 % "
            f"of the weights), got {num_samples}; draw more samples"
        )
    if isinstance(f.guide, AutoDelta):
        raise ScalaBLError(
            "a point-mass guide (delta/mle) has no density, so Pareto-k of q is undefined; "
            "use a Gaussian guide family"
        )
    if f.model.prior_scale is None:
        raise ScalaBLError("Pareto-k of q needs a prior (log p(s)); set prior_scale > 0")
    n_total = len(data) if num_data is None else int(num_data)
    n = len(data) if subset_size is None else min(int(subset_size), len(data))
    if n < 1:
        raise ScalaBLError(f"subset_size must be >= 1, got {subset_size}")
    subset = data.subset(n, seed=seed)
    draws, log_q = guide_draws_with_log_q(f.model, f.guide, num_samples, seed)
    pred = _predict_under(f, subset, draws, seed, batch_size, max_rows, progress)
    log_lik = pred.log_likelihood().sum(axis=1) * (n_total / n)
    lw = log_lik + log_prior(f.model, draws) - log_q
    khat, smoothed = pareto_k_from_log_weights(lw)
    return ParetoK(khat, lw, smoothed, n_total, n)


__all__ = [
    "Fit",
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
