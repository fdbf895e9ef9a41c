"""Posterior predictive: Bayesian model averaging over posterior samples of ``s``.

``p(y | x, D) ~= 1/S sum_s p(y | x, s_s)``, averaging *probabilities* (log-mean-
exp of per-sample log-softmax, in float64), not logits. The S samples are
folded into the batch dimension (each input row uses its own sample) in
chunks of at most ``max_rows`` model rows, so memory stays bounded. The
per-sample log-probabilities (S, N, C) are returned too: mutual information,
PSIS-LOO and the other diagnostics need them.

``mode="mean"`` predicts with the posterior mean / median of ``s`` (one
deterministic pass); point-mass guides always do that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuide
from tqdm.auto import tqdm

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.formats import TaskFormat
from scalabl_pyro.metrics import classification_metrics
from scalabl_pyro.model import ScalaBLModel


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


@torch.no_grad()
def draw_latents(
    guide: AutoGuide, num_samples: int, seed: int | None = 0
) -> dict[str, torch.Tensor]:
    """``num_samples`` joint draws from the guide: each site (S, r)."""
    if num_samples < 1:
        raise ScalaBLError(f"num_samples must be >= 1, got {num_samples}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    draws: dict[str, list[torch.Tensor]] = {}
    for _ in range(num_samples):
        tr = poutine.trace(guide).get_trace()
        for name, site in tr.nodes.items():
            if (
                site["type"] == "sample"
                and name.startswith("s.")
                and not site["is_observed"]
                and not site["infer"].get("is_auxiliary")  # e.g. AutoStructured's <name>_aux
            ):
                draws.setdefault(name, []).append(site["value"].detach())
    return {k: torch.stack(v) for k, v in draws.items()}


@torch.no_grad()
def posterior_spread(guide: AutoGuide, num_samples: int = 64, seed: int = 123) -> dict[str, float]:
    """Mean |posterior mean| and mean posterior std of ``s`` over all latent dims (Monte Carlo)."""
    if isinstance(guide, AutoDelta):
        point = torch.cat([v.flatten() for v in posterior_point(guide).values()])
        return {"mean_abs_s": float(point.abs().mean()), "mean_std_s": 0.0}
    draws = draw_latents(guide, num_samples, seed)
    flat = torch.cat([v.reshape(num_samples, -1) for v in draws.values()], dim=1)
    return {"mean_abs_s": float(flat.mean(0).abs().mean()), "mean_std_s": float(flat.std(0).mean())}


@torch.no_grad()
def posterior_point(guide: AutoGuide) -> dict[str, torch.Tensor]:
    """Posterior median of each site (the mean for Gaussian guides)."""
    return {k: v.detach() for k, v in guide.median().items() if k.startswith("s.")}


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
) -> Prediction:
    """Predictive distribution of every example in ``data``.

    ``latents`` overrides the guide with given draws (each (S, r)).
    """
    if len(data) == 0:
        raise ScalaBLError(f"{data.name}/{data.split} is empty; nothing to predict")
    if mode not in ("bma", "mean"):
        raise ScalaBLError(f"unknown prediction mode {mode!r}; use 'bma' or 'mean'")
    model.eval()
    if latents is None:
        if mode == "mean" or isinstance(guide, AutoDelta):
            latents = {k: v[None] for k, v in posterior_point(guide).items()}
        else:
            latents = draw_latents(guide, num_samples, seed)
    latents = {k: v.to(device) for k, v in latents.items()}
    s_total = next(iter(latents.values())).shape[0]
    out_lp, labels, masks = [], [], []
    n = len(data)
    # Batch examples of similar length together (less padding), then restore the order.
    order = sorted(range(n), key=lambda i: _text_length(data[i]))
    bar = tqdm(total=n, disable=not progress, desc="predict", dynamic_ncols=True, leave=False)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        exs = [data[i] for i in idx]
        batch = fmt.encode(exs, indices=idx).to(device)
        chunk = max(1, min(s_total, max_rows // max(batch.num_rows, 1)))
        parts = []
        for s0 in range(0, s_total, chunk):
            sub = {k: v[s0 : s0 + chunk] for k, v in latents.items()}
            scores = model.scores(batch, sub)  # (c, B, C)
            parts.append(torch.log_softmax(scores.double(), dim=-1).cpu())
        out_lp.append(torch.cat(parts, dim=0))
        labels.append(batch.labels.cpu())
        masks.append(batch.class_mask.cpu())
        bar.update(len(exs))
    bar.close()
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
