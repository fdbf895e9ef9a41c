"""Posterior predictive: Bayesian model averaging over posterior samples of ``s``.

``p(y | x, D) ~= 1/S sum_s p(y | x, s_s)``, averaging *probabilities* (log-mean-
exp of per-sample log-softmax, in float64), not logits. The per-sample
log-probabilities (S, N, C) are returned too: mutual information, PSIS-LOO and
the other diagnostics need them.

It runs the training program itself, as ``pyro.infer.Predictive`` does:

1. ``Predictive(model, guide=guide, num_samples=S, parallel=True,
   return_sites=<latent sites>)()`` draws S joint posterior samples once for
   the whole data set (the model without a batch only samples latents, so
   this costs no LLM pass);
2. for each batch, the model runs conditioned on those draws inside a
   vectorised sample plate (Predictive's parallel path) and the
   ``class_scores`` site is read off the trace. The model folds the samples
   into the batch (each input row uses its own sample), in chunks of at most
   ``max_rows`` model rows so memory stays bounded. Step 2 skips Predictive's
   two single-sample shape-discovery passes (the plate nesting is known: one
   data plate), which on an LLM would cost two extra forwards per batch; a
   test checks it equals ``Predictive(..., return_sites=["class_scores"])``.

``mode="mean"`` predicts with the posterior mean / median of ``s`` (one
deterministic pass); point-mass guides always do that. Randomness comes
from a local seed: the global generators are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.infer.autoguide import AutoDelta, AutoGuide
from tqdm.auto import tqdm

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.metrics import classification_metrics
from scalabl_pyro.program.formats import TaskBatch, TaskFormat
from scalabl_pyro.program.model import ScalaBLModel, pyro_settings
from scalabl_pyro.utils.rng import model_devices, seeded

#: Name of the vectorised sample plate (Pyro's Predictive uses the same one).
SAMPLE_PLATE = "_num_predictive_samples"


@dataclass
class Prediction:
    """Predictive probabilities and the per-sample log-probabilities behind them."""

    probs: np.ndarray  # (N, C) float64, BMA
    sample_log_probs: np.ndarray  # (S, N, C) float64, log p(y = c | x_n, s_s)
    labels: np.ndarray  # (N,) int
    class_mask: np.ndarray  # (N, C) bool

    @property
    def num_samples(self) -> int:
        """S, the number of posterior samples averaged."""
        return int(self.sample_log_probs.shape[0])

    def log_likelihood(self) -> np.ndarray:
        """Pointwise log-likelihood of the true labels per sample, (S, N)."""
        idx = self.labels[None, :, None].repeat(self.num_samples, axis=0)
        return np.take_along_axis(self.sample_log_probs, idx, axis=2)[..., 0]

    def metrics(self, n_bins: int = 15) -> dict[str, float]:
        """Accuracy, ECE (fraction), NLL (nats) and Brier of the BMA probabilities."""
        return classification_metrics(self.probs, self.labels, n_bins=n_bins)

    def tempered(self, temperature: float) -> Prediction:
        """The same draws at temperature ``T``: each draw's scores / T, then averaged.

        Unlike scaling the averaged probabilities, the draws stay distinct, so
        mutual information and the other epistemic measures survive.
        """
        from scalabl_pyro.inference.temperature import bma_log_probs, tempered_draws

        slp = tempered_draws(self.sample_log_probs, temperature)
        return Prediction(np.exp(bma_log_probs(slp)), slp, self.labels, self.class_mask)


@torch.no_grad()
def draw_latents(
    model: ScalaBLModel, guide: AutoGuide, num_samples: int, seed: int | None = 0
) -> dict[str, torch.Tensor]:
    """``num_samples`` joint draws from the guide through ``Predictive``: each site (S, *event)."""
    if num_samples < 1:
        raise ScalaBLError(f"num_samples must be >= 1, got {num_samples}")
    sites = model.site_names
    with pyro_settings(), seeded(seed, model_devices(model.lm)):
        draws = Predictive(
            model, guide=guide, num_samples=num_samples, parallel=True, return_sites=sites
        )()
    family = model.subspace
    return {k: draws[k].detach().reshape(num_samples, *family.event_shape(k)) for k in sites}


@torch.no_grad()
def posterior_spread(
    model: ScalaBLModel, guide: AutoGuide, num_samples: int = 64, seed: int = 123
) -> dict[str, float]:
    """Mean |posterior mean| and mean posterior std of ``s`` over all latent dims (Monte Carlo)."""
    if isinstance(guide, AutoDelta):
        point = torch.cat([v.flatten() for v in posterior_point(guide, model.site_names).values()])
        return {"mean_abs_s": float(point.abs().mean()), "mean_std_s": 0.0}
    draws = draw_latents(model, guide, num_samples, seed)
    flat = torch.cat([v.reshape(num_samples, -1) for v in draws.values()], dim=1)
    return {"mean_abs_s": float(flat.mean(0).abs().mean()), "mean_std_s": float(flat.std(0).mean())}


def posterior_spread_by_site(
    model: ScalaBLModel, guide: AutoGuide, num_samples: int = 64, seed: int = 123
) -> dict[str, dict[str, float]]:
    """Per latent site: mean |posterior mean| and mean posterior std of ``s`` (Monte Carlo).

    Their ratio ``std / |mu|`` is how much relative noise a draw puts on each
    layer's update ``B diag(s) A``: near 0 the layer is effectively a point estimate.
    """
    if isinstance(guide, AutoDelta):
        return {
            k: {"mean_abs_s": float(v.abs().mean()), "mean_std_s": 0.0}
            for k, v in posterior_point(guide).items()
        }
    draws = draw_latents(model, guide, num_samples, seed)
    return {
        k: {
            "mean_abs_s": float(v.reshape(num_samples, -1).mean(0).abs().mean()),
            "mean_std_s": float(v.reshape(num_samples, -1).std(0).mean()),
        }
        for k, v in draws.items()
    }


@torch.no_grad()
def widened_draws(
    model: ScalaBLModel,
    guide: AutoGuide,
    width: float,
    num_samples: int,
    mode: str,
    seed: int | None,
) -> dict[str, torch.Tensor]:
    """Posterior draws of ``s`` moved ``width`` times as far from the posterior mean.

    ``mu + width (s - mu)``: the posterior's std times ``width`` (1 is the
    fitted posterior, 0 the mean). For a Gaussian posterior over ``s``, in BMA mode.
    """
    if not (math.isfinite(width) and width >= 0):
        raise ScalaBLError(f"width must be a finite number >= 0, got {width}")
    if mode != "bma":
        raise ScalaBLError("width scales the draws of a BMA; drop width or use mode='bma'")
    mean = posterior_point(guide, model.site_names)
    draws = draw_latents(model, guide, num_samples, seed=seed)
    return {n: mean[n] + width * (v - mean[n]) for n, v in draws.items()}


def posterior_point(
    guide: AutoGuide, sites: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Posterior median of each latent site (the mean for Gaussian guides).

    ``sites`` names the latent sites (default: those of ``s``, ``s.<path>``).
    """
    with pyro_settings():
        median = guide.median()
    keep = set(sites) if sites is not None else {k for k in median if k.startswith("s.")}
    return {k: v.detach() for k, v in median.items() if k in keep}


@torch.no_grad()
def predictive_scores(
    model: ScalaBLModel, batch: TaskBatch, latents: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Class scores (S, B, C) of one batch: the model conditioned on S draws in a sample plate.

    ``latents`` holds (S, *event) per site. This is ``Predictive``'s parallel
    path (``poutine.condition`` on a vectorised plate outside the data plate).
    """
    num = next(iter(latents.values())).shape[0]
    shaped = {k: v.reshape(num, 1, *v.shape[1:]) for k, v in latents.items()}
    plate = pyro.plate(SAMPLE_PLATE, num, dim=-2)
    with pyro_settings():
        tr = poutine.trace(poutine.condition(plate(model), shaped)).get_trace(batch)
    return tr.nodes["class_scores"]["value"].reshape(num, batch.batch_size, batch.num_classes)


@torch.no_grad()
def predict(
    model: ScalaBLModel,
    guide: AutoGuide,
    fmt: TaskFormat,
    data: MCDataset,
    *,
    num_samples: int = 10,
    mode: str = "bma",
    batch_size: int = 8,
    max_rows: int = 256,
    seed: int | None = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    latents: Mapping[str, torch.Tensor] | None = None,
    stochastic_modules: Sequence[torch.nn.Module] = (),
) -> Prediction:
    """Predictive distribution of every example in ``data``.

    ``latents`` overrides the guide with given draws (each (S, *event)).
    ``stochastic_modules`` stay in training mode while the rest of the model
    is in eval mode: MC dropout keeps its LoRA dropout on, and each of the S
    folded copies of a row then gets its own dropout mask.
    """
    if len(data) == 0:
        raise ScalaBLError(f"{data.name}/{data.split} is empty; nothing to predict")
    if mode not in ("bma", "mean"):
        raise ScalaBLError(f"unknown prediction mode {mode!r}; use 'bma' or 'mean'")
    was_training = model.training
    model.eval()
    for m in stochastic_modules:
        m.train()
    if latents is None:
        if mode == "mean" or isinstance(guide, AutoDelta):
            point = posterior_point(guide, model.site_names)
            latents = {k: v[None] for k, v in point.items()}
        else:
            latents = draw_latents(model, guide, num_samples, seed)
    latents = {k: v.to(device) for k, v in latents.items()}
    s_total = next(iter(latents.values())).shape[0]
    out_lp, labels, masks = [], [], []
    n = len(data)
    # Batch examples of similar length together (less padding), then restore the order.
    order = sorted(range(n), key=lambda i: _text_length(data[i]))
    bar = tqdm(total=n, disable=not progress, desc="predict", dynamic_ncols=True, leave=False)
    # the program also samples the unobserved labels: keep that off the global generators
    try:
        with seeded(seed, model_devices(model.lm)):
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                exs = [data[i] for i in idx]
                batch = fmt.encode(exs, indices=idx).to(device)
                chunk = max(1, min(s_total, max_rows // max(batch.num_rows, 1)))
                parts = []
                for s0 in range(0, s_total, chunk):
                    sub = {k: v[s0 : s0 + chunk] for k, v in latents.items()}
                    scores = predictive_scores(model, batch, sub)  # (c, B, C)
                    parts.append(torch.log_softmax(scores.double(), dim=-1).cpu())
                out_lp.append(torch.cat(parts, dim=0))
                labels.append(batch.labels.cpu())
                masks.append(batch.class_mask.cpu())
                bar.update(len(exs))
    finally:
        bar.close()
        model.train(was_training)
    width = max(t.shape[-1] for t in out_lp)
    out_lp = [_pad_classes(t, width) for t in out_lp]
    masks = [_pad_classes(m, width, fill=False) for m in masks]
    inverse = torch.empty(n, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(n)
    slp = torch.cat(out_lp, dim=1)[:, inverse]  # (S, N, C) in data order
    bma = torch.logsumexp(slp, dim=0) - math.log(slp.shape[0])
    probs = bma.exp()
    return Prediction(
        probs=probs.numpy(),
        sample_log_probs=slp.numpy(),
        labels=torch.cat(labels)[inverse].numpy(),
        class_mask=torch.cat(masks)[inverse].numpy(),
    )


def _text_length(ex) -> int:
    """Characters of the longest (question + choice) text: a proxy for its token count."""
    return len(ex.question) + max(len(c) for c in ex.choices)


def _pad_classes(t: torch.Tensor, width: int, fill=float("-inf")) -> torch.Tensor:
    if t.shape[-1] == width:
        return t
    pad = torch.full((*t.shape[:-1], width - t.shape[-1]), fill, dtype=t.dtype)
    return torch.cat([t, pad], dim=-1)
