"""One fitted posterior as the diagnostics read it: draws, densities, and the predictive.

:class:`Fit` holds the Pyro model and guide of a ScalaBL object or of a
``(model, guide)`` pair. From it: draws of q with their exact ``log q`` (from
guide traces, what the ELBO uses), ``log p(s)``, prior draws, the point of a
guide, and the model's predictive with the latents fixed to given draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuide

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.predict import predict
from scalabl_pyro.program.adapters import SITE_PREFIX
from scalabl_pyro.program.formats import TaskFormat
from scalabl_pyro.program.model import ScalaBLModel, pyro_settings
from scalabl_pyro.utils.rng import model_devices, seeded


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


def _guide_point(guide: AutoGuide) -> dict[str, torch.Tensor]:
    with pyro_settings(), torch.no_grad():
        return {k: v.detach() for k, v in guide.median().items() if k.startswith(SITE_PREFIX)}


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
