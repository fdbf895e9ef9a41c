"""Laplace approximation over the subspace latents ``s`` (after MAP training).

With ``z`` the concatenation of every layer's ``s`` (D = L r dims, a few
hundred), training finds the MAP ``z*`` of ``log p(D, z) = sum_n log p(y_n | x_n, z)
+ log N(z; 0, sigma_p^2 I)`` (LoRA factors trained with it as point estimates),
and the posterior is

    q(z) = N(z*, H^-1),   H = -grad^2_z log p(D, z) at z*       (D x D)

:class:`LaplaceGuide` is Pyro's ``AutoLaplaceApproximation`` (a point mass on
the packed ``z`` while training) whose covariance, once fitted, turns it into
``N(loc, scale_tril scale_tril^T)`` -- one guide object for training, the
checkpoint and ``Predictive``. A zero ``scale_tril`` is the point mass.

``H`` is accumulated over the *whole* training set (or the first
``max_examples`` of a seeded permutation, scaled by ``N / m``), in float64:

* ``"ggn"`` (default): the generalised Gauss-Newton matrix of the categorical
  likelihood, ``sum_n J_n^T (diag p_n - p_n p_n^T) J_n`` with ``J_n = d scores_n / d z``
  (C x D), plus the prior's ``I / sigma_p^2``. Positive definite; equal to
  the Hessian where the scores are linear in ``z``. Cost: C backward passes
  per batch (each example gets its own copy of ``z`` so one backward gives
  every example's Jacobian row).
* ``"exact"``: ``torch.autograd.functional.hessian`` of the batch's negative
  log joint (D Hessian-vector products per batch, attention on SDPA's math
  kernel, the only one with a double backward): for small models and checks.

Pyro's own ``AutoLaplaceApproximation.laplace_approximation`` differentiates a
single (sub-sampled, N/B-scaled) batch; this sums every batch instead.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoLaplaceApproximation
from torch.nn.attention import SDPBackend, sdpa_kernel

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.formats import TaskFormat
from scalabl_pyro.program.model import ScalaBLModel, pyro_settings
from scalabl_pyro.program.scoring import class_scores

HESSIANS = ("ggn", "exact")


class LaplaceGuide(AutoLaplaceApproximation):
    """A point mass at ``loc`` until :meth:`set_covariance`; then ``N(loc, L L^T)``."""

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        d = self.loc.numel()
        self.register_buffer("scale_tril", torch.zeros(d, d, dtype=self.loc.dtype))

    @property
    def fitted(self) -> bool:
        """Whether a covariance has been fitted (else the guide is a point mass)."""
        return bool(self.scale_tril.abs().sum() > 0)

    def get_posterior(self, *args, **kwargs) -> dist.Distribution:
        if not self.fitted:
            return super().get_posterior(*args, **kwargs)
        return dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril.to(self.loc))

    def _loc_scale(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and marginal standard deviations of the packed ``z`` (``median`` uses the mean)."""
        scale = self.scale_tril.to(self.loc).pow(2).sum(-1).sqrt()
        return self.loc, scale

    @torch.no_grad()
    def set_covariance(self, covariance: torch.Tensor | None) -> None:
        """Store ``chol(covariance)``; ``None`` resets the guide to the point mass."""
        if covariance is None:
            self.scale_tril.zero_()
            return
        self.scale_tril.copy_(torch.linalg.cholesky(covariance.double()).to(self.scale_tril))

    def unpack(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Packed ``z`` (..., D) -> one tensor per site (..., r) (all sites are real-valued)."""
        return {site["name"]: value for site, value in self._unpack_latent(latent)}


def _batches(fmt: TaskFormat, data: MCDataset, idx: list[int], batch_size: int, device):
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        yield fmt.encode([data[i] for i in chunk], indices=chunk).to(device)


def _ggn(model: ScalaBLModel, guide: LaplaceGuide, batch, loc: torch.Tensor) -> torch.Tensor:
    """``sum_n J_n^T (diag p_n - p_n p_n^T) J_n`` over one batch (D x D, float64)."""
    b = batch.batch_size
    lat = loc.detach().expand(b, -1).clone().requires_grad_(True)
    per_row = {k: v[batch.row_example] for k, v in guide.unpack(lat).items()}
    with model.subspace.use(per_row):
        scores = class_scores(model.subspace, batch)  # (B, C); row n depends on lat[n] only
    probs = torch.softmax(scores.double(), dim=-1).detach()
    jac = []
    for c in range(scores.shape[1]):
        (g,) = torch.autograd.grad(scores[:, c].sum(), lat, retain_graph=True)
        jac.append(g.double())
    jac = torch.stack(jac, dim=1)  # (B, C, D)
    lam = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    return torch.einsum("bcd,bce,bef->df", jac, lam, jac)


def _exact(model: ScalaBLModel, guide: LaplaceGuide, batch, loc: torch.Tensor) -> torch.Tensor:
    """Hessian of the batch's negative log-likelihood in ``z`` (autograd, D x D, float64)."""

    def nll(z: torch.Tensor) -> torch.Tensor:
        scores = model.scores(batch, guide.unpack(z))
        lp = torch.log_softmax(scores.float(), dim=-1)
        return -lp.gather(-1, batch.labels[:, None]).sum()

    with exact_hessian_attention():
        return torch.autograd.functional.hessian(nll, loc.detach().clone()).double()


def exact_hessian_attention():
    """SDPA's math kernel: the fused CPU/GPU kernels have no double backward."""
    return sdpa_kernel([SDPBackend.MATH])


def prior_hessian(model: ScalaBLModel, guide: LaplaceGuide) -> torch.Tensor:
    """``-grad^2 log p(z)`` of the prior (``I / sigma_p^2`` for the default prior)."""

    def neg_log_prior(z: torch.Tensor) -> torch.Tensor:
        return -sum(model.prior(k).log_prob(v) for k, v in guide.unpack(z).items())

    return torch.autograd.functional.hessian(neg_log_prior, guide.loc.detach().clone()).double()


def negative_log_joint_hessian(
    model: ScalaBLModel,
    guide: LaplaceGuide,
    fmt: TaskFormat,
    data: MCDataset,
    *,
    kind: str = "ggn",
    batch_size: int = 8,
    max_examples: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``H = -grad^2_z log p(D, z)`` at the guide's ``loc``, over the data set (D x D, float64)."""
    if kind not in HESSIANS:
        raise ScalaBLError(f"unknown Laplace Hessian {kind!r}; use 'ggn' or 'exact'")
    if model.prior_scale is None:
        raise ScalaBLError("the Laplace approximation needs a prior on s; set prior_scale > 0")
    n = len(data)
    if max_examples is not None and max_examples < 1:
        raise ScalaBLError(f"laplace_max_examples must be >= 1 or None, got {max_examples}")
    idx = list(range(n))
    if max_examples is not None and max_examples < n:
        gen = torch.Generator().manual_seed(seed)
        idx = sorted(torch.randperm(n, generator=gen)[:max_examples].tolist())
    scale = n / len(idx)
    term = _ggn if kind == "ggn" else _exact
    was_training = model.training
    model.eval()
    loc = guide.loc.detach()
    h = torch.zeros(loc.numel(), loc.numel(), dtype=torch.float64)
    try:
        with pyro_settings():
            for batch in _batches(fmt, data, idx, batch_size, device):
                h += scale * term(model, guide, batch, loc).cpu()
            h += prior_hessian(model, guide).cpu()
    finally:
        model.train(was_training)
    return 0.5 * (h + h.T)


def fit_laplace(guide: LaplaceGuide, hessian: torch.Tensor) -> torch.Tensor:
    """Set the guide's covariance to ``H^-1``; returns the covariance (float64)."""
    try:
        chol = torch.linalg.cholesky(hessian.double())
    except torch.linalg.LinAlgError as e:
        raise ScalaBLError(
            "the Hessian of the negative log joint is not positive definite at the trained s "
            "(not a minimum); use laplace_hessian='ggn' or train longer"
        ) from e
    cov = torch.cholesky_inverse(chol)
    guide.set_covariance(cov)
    return cov


def covariance_parameters(num_latents: int) -> int:
    """Free parameters of the Laplace covariance: ``D (D + 1) / 2``."""
    return num_latents * (num_latents + 1) // 2


__all__ = [
    "HESSIANS",
    "LaplaceGuide",
    "covariance_parameters",
    "fit_laplace",
    "negative_log_joint_hessian",
    "prior_hessian",
]
