"""The public entry point: :class:`ScalaBL`, a Bayesian LoRA model in a few lines.

    from scalabl_pyro import ScalaBL, ScalaBLConfig, TrainConfig, load_task

    sbl = ScalaBL.from_base(ScalaBLConfig(base_model="smollm2-135m"))
    sbl.fit(load_task("arc_easy", "train", limit=64), TrainConfig(steps=160))
    print(sbl.evaluate(load_task("arc_easy", "validation"), num_samples=10))
    sbl.save_pretrained("runs/arc-easy")

The class holds the parts and delegates: to its method (``ScalaBLConfig.method``, an
object from :func:`scalabl_pyro.methods.get_method`: latents, guide, training,
prediction, checkpoint contents, export), to ``inference/`` (the run, BMA) and to
``io/checkpoint.py`` (the files).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference import predict as prediction
from scalabl_pyro.inference.resume import ResumePlan, plan_fit
from scalabl_pyro.inference.run import save_from_main
from scalabl_pyro.inference.train import TrainConfig, Trainer, TrainHistory
from scalabl_pyro.io import checkpoint as ckpt
from scalabl_pyro.methods import FitSteps
from scalabl_pyro.methods.laplace import fit_covariance
from scalabl_pyro.program.formats import TaskFormat, format_for
from scalabl_pyro.program.guides import count_free_parameters


class ScalaBL:
    """A LoRA-adapted causal LM with a posterior over its latents, as its method defines.

    Outside training and prediction the adapted peft model computes the
    posterior-mean model (``ScalaBL.subspace.peft_model(...)`` is a plain
    forward: the latent family follows the guide). No call changes global
    state: seeds are local, Pyro settings are entered as a context.
    ``num_data`` is the data plate's size the model is built with (a
    checkpoint's training-set size); training passes its own with every batch.
    """

    def __init__(
        self,
        config: ScalaBLConfig,
        base_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        num_data: int | None = None,
    ) -> None:
        self.config, self.tokenizer = config, tokenizer
        self.device = next(base_model.parameters()).device
        self._method = config.method_object
        self.subspace, self.model, self._init_scales = self._method.build_program(
            config, base_model, tokenizer, num_data=num_data
        )
        self.rebuild_guide()
        self.history = TrainHistory()
        self.train_config: TrainConfig | None = None
        self._trainer: Trainer | None = None
        self._merged = False
        self.members: list[dict[str, torch.Tensor]] = []  # ensembles: one state per member
        #: The training set's identity (``MCDataset.identity``): saved, checked on resume.
        self.train_data: dict | None = None
        #: The BMA's temperature from :meth:`calibrate` (None: not calibrated), and on what.
        self.temperature: float | None = None
        self.temperature_from: str | None = None

    @property
    def method(self) -> str:
        """The method's name (``ScalaBLConfig.method``): scalabl or a baseline."""
        return self.config.method

    @property
    def num_data(self) -> int | None:
        """The size of the training set (of the last fit, else the model's own N)."""
        if self.train_data is not None and "num_examples" in self.train_data:
            return int(self.train_data["num_examples"])
        return self.model.num_data

    def rebuild_guide(self) -> None:
        """(Re)build the method's guide at the family's initial values; the family follows it."""
        self.guide = self._method.fresh_guide(
            self.config, self.model, self.subspace, self._init_scales, self.device
        )

    # ----------------------------------------------------------- construction
    @classmethod
    def from_base(cls, config: ScalaBLConfig | None = None, **overrides) -> ScalaBL:
        """Load the base model named in the config (hub id, local dir or embedded alias)."""
        config = replace(config or ScalaBLConfig(), **overrides)
        return cls(config, *_load_base(config))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        base_model: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
    ) -> ScalaBL:
        """Rebuild a saved model: base model + LoRA factors + guide (+ head)."""
        checkpoint = ckpt.Checkpoint(path)
        checkpoint.check_files()  # before the (slow) base model load
        config = ScalaBLConfig.from_dict(checkpoint.meta["config"])
        if base_model is not None:
            config = replace(config, base_model=base_model)
        config = replace(config, device=device, dtype=dtype)
        return cls.from_checkpoint(checkpoint, config, *_load_base(config))

    @classmethod
    def from_parts(
        cls,
        path: str | Path,
        config: ScalaBLConfig,
        base_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
    ) -> ScalaBL:
        """Load a checkpoint onto an already loaded base model (tests, custom loading)."""
        return cls.from_checkpoint(ckpt.Checkpoint(path), config, base_model, tokenizer)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: ckpt.Checkpoint,
        config: ScalaBLConfig,
        base_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
    ) -> ScalaBL:
        """Build on ``base_model`` and restore the checkpoint's parameters and history."""
        obj = cls(config, base_model, tokenizer, num_data=checkpoint.meta.get("num_data"))
        obj.load_parameters(checkpoint)
        obj.history = TrainHistory.from_dict(checkpoint.history())
        if "train_config" in checkpoint.meta:
            obj.train_config = TrainConfig(**checkpoint.meta["train_config"])
        obj.train_data = checkpoint.meta.get(ckpt.TRAIN_DATA_KEY)
        obj.temperature = checkpoint.meta.get("temperature")
        obj.temperature_from = checkpoint.meta.get("temperature_from")
        return obj

    def load_parameters(self, checkpoint: ckpt.Checkpoint) -> None:
        """Copy a checkpoint's LoRA factors and guide (and members) into this model."""
        self._check_alive()
        self.members = self._method.load_parameters(self, checkpoint)

    def format_for(self, data: MCDataset) -> TaskFormat:
        """The task format for a data set (choice scoring adapts to its number of choices)."""
        return format_for(self.config, self.tokenizer, data)

    # ------------------------------------------------------------- training
    def fit(
        self,
        train: MCDataset,
        config: TrainConfig | None = None,
        *,
        validation: MCDataset | None = None,
        output_dir: str | Path | None = None,
        resume: bool | ResumePlan = False,
        overwrite: bool = False,
        eval_samples: int = 4,
        calibrate_on: MCDataset | None = None,
    ) -> TrainHistory:
        """Train the method on ``train``: SVI for ScalaBL and BLoB, point estimates otherwise.

        ``output_dir`` is checked before anything runs, as the CLI's ``--output``:
        it must be new or empty, or a checkpoint with ``resume=True`` (continue
        it) or ``overwrite=True`` (replace it, only if it holds nothing else). A
        checkpoint is written every ``config.checkpoint_every`` steps and at the end.

        ``resume=True`` restores the parameters *and* the optimizer state, as
        decided by :func:`~scalabl_pyro.inference.resume.plan_resume` (the CLI's
        path too; it may pass its :class:`~scalabl_pyro.inference.resume.ResumePlan`
        instead of ``True``). ``config.steps`` is the new total; every other
        setting exact resume depends on (batch size, accumulation, seed,
        objective, KL schedule and weight, particles, the optimizer's fields, the
        training set, the model's settings) must be the saved one, and a change
        is refused naming it. The remaining steps follow the schedule of a run of
        the new total.

        SIGINT/SIGTERM saves a resumable checkpoint and raises
        :class:`~scalabl_pyro.inference.interrupt.TrainingInterrupted`; a
        diverging run raises :class:`~scalabl_pyro.inference.train.NonFiniteError`
        naming the last good checkpoint. The method decides the rest (Laplace
        fits its covariance after the MAP; an ensemble trains K members).

        ``calibrate_on`` (a validation split, never the test split) is the
        recommended recipe: after training, :meth:`calibrate` fits the BMA's
        temperature on it, and :meth:`predict` and the checkpoint use it. Without
        it the predictive is the plain BMA (a new fit drops an earlier temperature).
        """
        self._check_alive()
        config = config or TrainConfig()
        self._method.check_train_config(config, bool(resume))
        plan = plan_fit(
            self.config.to_dict(), train, config, output_dir, resume, overwrite=overwrite
        )
        self.train_data = train.identity()
        self.temperature = self.temperature_from = None  # it belonged to the model before

        once = functools.partial(
            self._method.train_once, self, validation=validation, eval_samples=eval_samples
        )
        steps = FitSteps(once, self.rebuild_guide)
        outcome = self._method.fit(self, train, config, steps, output_dir=output_dir, resume=plan)
        self.history = outcome.history
        if outcome.members is not None:
            self.members = outcome.members
        if not outcome.resumable:
            self._trainer = None  # no optimizer state: not resumable
        if calibrate_on is not None:
            self.calibrate(calibrate_on, num_samples=max(eval_samples, 10))
        if output_dir is not None:
            save_from_main(self._trainer, lambda: self.save_pretrained(output_dir))
        return self.history

    def fit_laplace(self, data: MCDataset, *, batch_size: int = 8) -> torch.Tensor:
        """Set the Laplace covariance ``H^-1`` at the current MAP of ``s``; returns it (D x D)."""
        self._check_alive()
        return fit_covariance(self, data, batch_size=batch_size)

    # ----------------------------------------------------------- prediction
    def posterior_mean(self) -> dict[str, torch.Tensor]:
        """The posterior mean (median for point masses) of every latent site."""
        return prediction.posterior_point(self.guide, self.model.site_names)

    def predict(
        self,
        data: MCDataset,
        *,
        num_samples: int = 10,
        mode: str = "bma",
        batch_size: int = 8,
        max_rows: int = 256,
        seed: int | None = 0,
        progress: bool = True,
        width: float = 1.0,
        temperature: float | None = None,
    ) -> prediction.Prediction:
        """The method's predictive distribution on ``data``.

        BMA over ``num_samples`` posterior draws (scalabl, blob, laplace) or
        dropout masks (mc_dropout), or the posterior mean with ``mode='mean'``;
        an ensemble averages its K members; point estimates give one pass.
        ``width`` moves every draw of ``s`` that many times as far from the
        posterior mean (``mu + width (s - mu)``; a Gaussian over ``s`` only: scalabl,
        laplace), a post-hoc knob chosen on validation (``docs/calibration.md``).
        ``temperature`` divides each draw's class scores by ``T`` before the
        draws are averaged (:meth:`Prediction.tempered`); ``None`` takes the one
        :meth:`calibrate` fitted (none if it never ran), ``1.0`` is the plain BMA.
        """
        self._check_alive()
        if temperature is None:
            temperature = self.temperature
        if temperature is not None and temperature != 1.0:
            kw = dict(num_samples=num_samples, mode=mode, batch_size=batch_size)
            kw.update(max_rows=max_rows, seed=seed, progress=progress, width=width)
            kw.update(temperature=1.0)  # the raw draws, then tempered once
            return self.predict(data, **kw).tempered(temperature)

        def run(latents=None, stochastic=()) -> prediction.Prediction:
            return prediction.predict(
                self.model,
                self.guide,
                self.format_for(data),
                data,
                num_samples=num_samples,
                mode=mode,
                batch_size=batch_size,
                max_rows=max_rows,
                seed=seed,
                device=self.device,
                progress=progress,
                latents=latents,
                stochastic_modules=stochastic,
            )

        kw = dict(num_samples=num_samples, mode=mode, width=width, seed=seed)
        return self._method.predictive(self, run, **kw)

    def calibrate(
        self, validation: MCDataset, *, num_samples: int = 10, seed: int | None = 0
    ) -> float:
        """Fit the BMA's temperature on ``validation`` and keep it; returns ``T``.

        Each draw's class scores are divided by ``T`` and the tempered
        probabilities averaged, and ``T`` minimises the NLL of that average
        (:func:`~scalabl_pyro.inference.temperature.fit_bma_temperature`), so
        the draws stay distinct and the posterior's disagreement (MI) survives.
        Use a validation split, never the one you report.
        """
        from scalabl_pyro.inference.temperature import fit_bma_temperature

        raw = self.predict(
            validation, num_samples=num_samples, seed=seed, progress=False, temperature=1.0
        )
        self.temperature = fit_bma_temperature(raw.sample_log_probs, raw.labels)
        self.temperature_from = f"{validation.name}/{validation.split} ({len(validation)})"
        return self.temperature

    def evaluate(self, data: MCDataset, **predict_kwargs) -> dict[str, float]:
        """Accuracy, ECE, NLL and Brier on ``data`` (keyword args go to :meth:`predict`)."""
        return self.predict(data, **predict_kwargs).metrics()

    # --------------------------------------------------------------- export
    def save_pretrained(self, path: str | Path) -> Path:
        """Write a checkpoint directory atomically (layout: ``io/checkpoint.py``)."""
        self._check_alive()
        state = self._trainer.state_dict() if self._trainer is not None else None
        return ckpt.save_checkpoint(
            path, self._method.checkpoint_contents(self, self._method.adapter(self), state)
        )

    def export_adapter(self, path: str | Path) -> Path:
        """Write only the plain peft adapter of the posterior-mean model (for peft users).

        ``adapter_config.json`` names the base model (:func:`checkpoint.adapter_base`),
        so ``peft.AutoPeftModelForCausalLM.from_pretrained(path)`` loads it on its own.
        """
        self._check_alive()
        state, config = self._method.adapter(self)
        return ckpt.write_atomic_dir(path, lambda tmp: ckpt.save_adapter(tmp, state, config))

    def merge_and_unload(self) -> PreTrainedModel:
        """A plain Hugging Face model with the posterior mean merged in; consumes this ScalaBL."""
        self._check_alive()
        merged = self.subspace.merge_and_unload(self.posterior_mean())
        self._merged = True
        return merged

    def _check_alive(self) -> None:
        if self._merged:
            raise ScalaBLError(
                "this ScalaBL was merged into a plain model by merge_and_unload(); load the "
                "checkpoint again (ScalaBL.from_pretrained) to train or predict"
            )

    # ---------------------------------------------------------- inspection
    @property
    def num_variational_parameters(self) -> int:
        """Free parameters of the posterior over the latents (2 r L for mean-field)."""
        return count_free_parameters(self.guide)

    @property
    def num_extra_parameters(self) -> int:
        """Parameters the method adds over plain LoRA (the paper's parameter-cost column)."""
        return self._method.num_extra_parameters(self)

    def summary(self) -> str:
        """One paragraph describing the model (layers, latents, parameter counts)."""
        return self._method.describe(self)


def _load_base(config: ScalaBLConfig):
    """The base model and tokenizer a config names (hub id, local dir or embedded alias)."""
    from scalabl_pyro.io.loading import load_base_model

    return load_base_model(
        config.base_model,
        dtype=config.dtype,
        device=config.device,
        trust_remote_code=config.trust_remote_code,
        quantization=config.quantization,
    )
