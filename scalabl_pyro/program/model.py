"""The ScalaBL Pyro program.

One root :class:`~pyro.nn.PyroModule` holds the peft model as a plain
``nn.Module`` (the Hugging Face model is never converted to PyroModules).
For every adapted layer ``l`` it samples

    s_l ~ N(0, sigma_p^2 I_r)            (site ``s.<module path>``)

hands the draws to the layers inside the latent family's scope (nothing stays
on a module afterwards), computes the class scores of the batch, records
them with ``pyro.deterministic`` and draws or observes the labels under a
Categorical likelihood inside a data plate of the full data-set size, so the
log-likelihood is scaled by ``N / B``.

One program for training and prediction: ``model(batch, labels)`` is what
the ELBO trains, and ``Predictive(model, guide=guide, num_samples=S,
parallel=True, return_sites=["class_scores"])(batch)`` (labels left ``None``)
gives the posterior predictive; ``predict.py`` does exactly that.

Vectorised particles (``Trace_ELBO(vectorize_particles=True)``) and parallel
``Predictive`` give ``s`` a leading sample dimension; the model folds those
samples into the batch (each input row uses its own sample) so Hugging Face
forwards never see an extra dimension.

Which quantities are random, and their prior, is the latent family's choice
(``latents.py``); ``prior_scale=None`` there switches the prior off (an
improper flat prior): with a point-mass guide that is plain
maximum-likelihood LoRA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.adapters import SubspaceLoRA
from scalabl_pyro.program.formats import TaskBatch
from scalabl_pyro.program.scoring import class_scores
from scalabl_pyro.program.settings import PYRO_SETTINGS, pyro_settings

__all__ = ["PYRO_SETTINGS", "ScalaBLModel", "pyro_settings"]


class ScalaBLModel(PyroModule):
    """LLM with subspace LoRA as a Pyro model: latents ``s`` per layer, Categorical likelihood.

    ``num_data`` is the data plate's size N when a call does not pass one (a
    model rebuilt from a checkpoint gets its training set's size); nothing sets
    it afterwards: the trainer passes N with every call.

    ``lora_prior_scale`` adds the MAP baseline's Gaussian prior on the LoRA
    factors, ``pyro.factor("lora_prior", sum log N(theta; 0, sigma^2))`` with
    ``theta`` = (B, diag(s) A) of every layer (:meth:`SubspaceLoRA.lora_log_prior`),
    on training passes (labels observed) with one ``s`` per site.
    """

    def __init__(
        self,
        subspace: SubspaceLoRA,
        *,
        num_data: int | None = None,
        lora_prior_scale: float | None = None,
    ) -> None:
        super().__init__(name="scalabl")
        self.subspace = subspace
        self.lm = subspace.peft_model  # registers the peft model as a plain submodule
        self.head = subspace.head
        self.num_data = num_data
        self.lora_prior_scale = lora_prior_scale

    @property
    def site_names(self) -> list[str]:
        """Latent sample sites, one per adapted layer."""
        return self.subspace.site_names

    @property
    def prior_scale(self) -> float | None:
        """The prior scale sigma_p of the latent family (None: flat prior, i.e. MLE)."""
        return self.subspace.prior_scale

    def prior(self, name: str) -> dist.Distribution:
        """The prior of one site, as the latent family defines it."""
        return self.subspace.prior(name)

    def sample_latents(self) -> dict[str, torch.Tensor]:
        """The latent sample statements (also the guides' prototype)."""
        return {name: pyro.sample(name, self.prior(name)) for name in self.site_names}

    def scores(self, batch: TaskBatch, latents: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Class scores for the batch under the given latents.

        Each latent has its event shape (``(r,)`` for ``s``) or (*lead, *event);
        with a leading shape the result is (*lead', B, C) where lead' drops a
        trailing plate-placeholder dimension of size 1 (the data plate's slot),
        so it broadcasts against Pyro's particle / sample plates.
        """
        name0, first = next(iter(latents.items()))
        event = self.subspace.event_shape(name0)
        lead = tuple(first.shape[: first.dim() - len(event)])
        if not lead:
            with self.subspace.use(latents, groups=batch.row_example):
                return class_scores(self.subspace, batch)
        out_lead = lead[:-1] if lead[-1] == 1 and len(lead) > 1 else lead
        copies = math.prod(lead)
        rows = batch.num_rows
        folded = {
            name: v.reshape(copies, *self.subspace.event_shape(name)).repeat_interleave(rows, dim=0)
            for name, v in latents.items()
        }
        with self.subspace.use(folded):
            s = class_scores(self.subspace, batch, copies=copies)
        return s.reshape(*out_lead, batch.batch_size, batch.num_classes)

    def forward(
        self,
        batch: TaskBatch | None = None,
        labels: torch.Tensor | None = None,
        num_data: int | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Sample the latents; with a batch, score it and draw (or observe) its labels.

        ``labels=None`` leaves ``obs`` unobserved: that is the posterior
        predictive under ``Predictive``. Training passes ``batch.labels`` and
        ``num_data``, the data plate's size N (the trainer passes the training
        set's); without it the size given when the model was built is used,
        else the batch's own (no scaling).
        """
        latents = self.sample_latents()
        if batch is None:
            return latents
        if self.lora_prior_scale is not None and labels is not None:
            pyro.factor("lora_prior", self.subspace.lora_log_prior(latents, self.lora_prior_scale))
        scores = self.scores(batch, latents)
        n = num_data if num_data is not None else self.num_data
        n = n if n is not None else batch.batch_size
        if n < batch.batch_size:
            raise ScalaBLError(
                f"num_data={n} is smaller than the batch ({batch.batch_size}); set num_data to "
                "the size of the training set"
            )
        with pyro.plate("data", n, subsample=batch.indices):
            pyro.deterministic("class_scores", scores, event_dim=1)
            pyro.sample("obs", dist.Categorical(logits=scores), obs=labels)
        return scores
