"""The public entry point: :class:`ScalaBL`, a Bayesian LoRA model in a few lines.

    from scalabl_pyro import ScalaBL, ScalaBLConfig, TrainConfig, load_task

    sbl = ScalaBL.from_base(ScalaBLConfig(base_model="smollm2-135m"))
    sbl.fit(load_task("arc_easy", "train", limit=64), TrainConfig(steps=160))
    print(sbl.evaluate(load_task("arc_easy", "validation"), num_samples=10))
    sbl.save_pretrained("runs/arc-easy")

The class wires the pieces together and delegates: the latent family
(``program/adapters.py``), the Pyro model (``program/model.py``), the guide (``program/guides.py``),
training (``inference/train.py``), prediction (``inference/predict.py``), checkpoints
(``io/checkpoint.py``). ``merge_and_unload()`` and ``export_adapter()`` give a
plain Hugging Face model / peft adapter equal to the posterior-mean model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import torch
from pyro.infer.autoguide import AutoDelta, init_to_value
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scalabl_pyro import __version__
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.interrupt import TrainingInterrupted, stop_after_step, stopping_steps
from scalabl_pyro.inference.predict import (
    Prediction,
    posterior_point,
    posterior_spread_by_site,
    predict,
)
from scalabl_pyro.inference.resume import ResumePlan, plan_resume
from scalabl_pyro.inference.train import NonFiniteError, TrainConfig, Trainer, TrainHistory
from scalabl_pyro.io import checkpoint as ckpt
from scalabl_pyro.methods import DETERMINISTIC_METHODS, POINT_S_METHODS, gaussian_over_s
from scalabl_pyro.methods import ensemble as ens
from scalabl_pyro.methods.blob import BlobGuide, BlobLoRA
from scalabl_pyro.methods.laplace import (
    LaplaceGuide,
    covariance_parameters,
    fit_laplace,
    negative_log_joint_hessian,
)
from scalabl_pyro.methods.mc_dropout import dropout_modules
from scalabl_pyro.program.adapters import SubspaceLoRA
from scalabl_pyro.program.formats import TaskFormat, make_format
from scalabl_pyro.program.guides import build_guide, count_free_parameters
from scalabl_pyro.program.model import ScalaBLModel, pyro_settings
from scalabl_pyro.utils.rng import model_devices, seeded

log = logging.getLogger(__name__)


class ScalaBL:
    """A LoRA-adapted causal LM with a Gaussian posterior over its subspace latents.

    Outside training and prediction the adapted peft model computes the
    posterior-mean model (``ScalaBL.subspace.peft_model(...)`` is a plain
    forward). No call changes global state: seeds are local, Pyro settings
    are entered as a context.
    """

    def __init__(
        self,
        config: ScalaBLConfig,
        base_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.device = next(base_model.parameters()).device
        class_ids = None
        if config.task_format == "letter":
            class_ids = self._letter_format(config.num_classes).class_token_ids.to(self.device)
        if config.method == "blob":
            self.subspace: SubspaceLoRA = BlobLoRA(
                base_model,
                rank=config.rank,
                alpha=config.alpha,
                dropout=config.lora_dropout,
                target_modules=config.target_modules,
                seed=config.seed,
                prior_scale=config.lora_prior_scale,
            )
        else:
            self.subspace = SubspaceLoRA(
                base_model,
                rank=config.rank,
                alpha=config.alpha,
                dropout=config.lora_dropout,
                target_modules=config.target_modules,
                class_token_ids=class_ids,
                seed=config.seed,
                prior_scale=config.prior_scale,
            )
        self._init_scales = self.subspace.initial_scales(config.initial_scale, config.seed)
        if config.reference_prior_quirk:
            self.subspace.set_reference_prior_quirk(self._init_scales)
        lora_prior = config.lora_prior_scale if config.method == "map" else None
        with pyro_settings(), seeded(config.seed, model_devices(base_model)):
            # PyroModules are built under the settings
            self.model = ScalaBLModel(self.subspace, lora_prior_scale=lora_prior)
        self._build_guide()
        self.subspace.set_point_provider(self.posterior_mean)
        self.history = TrainHistory()
        self.train_config: TrainConfig | None = None
        self._trainer: Trainer | None = None
        self._merged = False
        self.members: list[dict[str, torch.Tensor]] = []  # ensembles: one state per member
        #: The training set's identity (``MCDataset.identity``): saved, checked on resume.
        self.train_data: dict | None = None

    @property
    def method(self) -> str:
        """The method (``ScalaBLConfig.method``): scalabl or a baseline."""
        return self.config.method

    def _build_guide(self) -> None:
        """(Re)build the guide at the family's initial values (the method decides its kind)."""
        config = self.config
        with pyro_settings(), seeded(config.seed, model_devices(self.subspace.peft_model)):
            if config.method == "blob":
                assert isinstance(self.subspace, BlobLoRA)
                self.guide = BlobGuide(self.model, self.subspace, init_scale=config.initial_scale)
            elif config.method == "laplace":
                init = {k: v.clone() for k, v in self.subspace.init_values.items()}
                self.guide = LaplaceGuide(self.model, init_loc_fn=init_to_value(values=init))
            else:
                self.guide = build_guide(
                    config.guide,
                    self.model,
                    self.subspace.init_values,
                    init_scale=config.initial_scale,
                    low_rank=config.guide_rank,
                    init_scales=self._init_scales,
                )
            with torch.no_grad():
                self.guide()  # build the variational parameters now
        self.guide.to(self.device)

    # ----------------------------------------------------------- construction
    @classmethod
    def from_base(cls, config: ScalaBLConfig | None = None, **overrides) -> ScalaBL:
        """Load the base model named in the config (hub id, local dir or embedded alias)."""
        from scalabl_pyro.io.loading import load_base_model

        config = replace(config or ScalaBLConfig(), **overrides)
        model, tok = load_base_model(
            config.base_model,
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
            quantization=config.quantization,
        )
        return cls(config, model, tok)

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
        from scalabl_pyro.io.loading import load_base_model

        checkpoint = ckpt.Checkpoint(path)
        checkpoint.check_files()  # before the (slow) base model load
        config = ScalaBLConfig.from_dict(checkpoint.meta["config"])
        if base_model is not None:
            config = replace(config, base_model=base_model)
        config = replace(config, device=device, dtype=dtype)
        model, tok = load_base_model(
            config.base_model,
            dtype=dtype,
            device=device,
            trust_remote_code=config.trust_remote_code,
            quantization=config.quantization,
        )
        return cls.from_checkpoint(checkpoint, config, model, tok)

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
        obj = cls(config, base_model, tokenizer)
        obj.load_parameters(checkpoint)
        obj.history = TrainHistory.from_dict(checkpoint.history())
        if "train_config" in checkpoint.meta:
            obj.train_config = TrainConfig(**checkpoint.meta["train_config"])
        obj.model.num_data = checkpoint.meta.get("num_data")
        obj.train_data = checkpoint.meta.get(ckpt.TRAIN_DATA_KEY)
        return obj

    def load_parameters(self, checkpoint: ckpt.Checkpoint) -> None:
        """Copy a checkpoint's LoRA factors and guide into this model (checked first)."""
        self._check_alive()
        checkpoint.check_files()
        checkpoint.check_compatible(self.model.site_names, self.subspace.lora_shapes())
        self.subspace.load_lora_state(checkpoint.lora())
        state = checkpoint.guide_state()
        try:
            self.guide.load_state_dict({k: v.to(self.device) for k, v in state.items()})
        except RuntimeError as e:
            raise ScalaBLError(
                f"{checkpoint.path / ckpt.GUIDE_FILE} does not fit the {self.config.guide} guide "
                f"of this model ({str(e).splitlines()[0]}); load it with the config it was saved "
                "with"
            ) from e
        packed = checkpoint.members()
        self.members = ens.unpack_members(packed) if packed else []

    # -------------------------------------------------------------- formats
    def _letter_format(self, num_classes: int) -> TaskFormat:
        return make_format(
            "letter",
            self.tokenizer,
            num_classes,
            max_length=self.config.max_length,
            answer_tokens=self.config.answer_tokens,
            chat_template=self.config.chat_template,
        )

    def format_for(self, data: MCDataset) -> TaskFormat:
        """The task format for a data set (choice scoring adapts to its number of choices)."""
        if self.config.task_format == "letter":
            if data.num_classes > self.config.num_classes:
                raise ScalaBLError(
                    f"{data.name} has up to {data.num_classes} choices but the model was built "
                    f"for {self.config.num_classes}; set num_classes={data.num_classes}"
                )
            return self._letter_format(self.config.num_classes)
        return make_format(
            "choice",
            self.tokenizer,
            max(data.num_classes, 2),
            max_length=self.config.max_length,
            normalization=self.config.normalization,  # type: ignore[arg-type]
        )

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
    ) -> TrainHistory:
        """Train the method on ``train``: SVI for ScalaBL and BLoB, point estimates otherwise.

        With ``output_dir`` a checkpoint is written every
        ``config.checkpoint_every`` steps and at the end. ``output_dir`` is
        checked before anything runs, as the CLI's ``--output``
        (:func:`checkpoint.check_output_dir`): it must be new or empty, or a
        checkpoint with ``resume=True`` (continue it) or ``overwrite=True``
        (replace it, only if it holds nothing else), and writable.

        ``resume=True`` restores the parameters *and* the optimizer state saved
        there (a freshly built model resumes exactly), as decided by
        :func:`~scalabl_pyro.inference.resume.plan_resume` (the CLI's path too; it
        may pass its :class:`~scalabl_pyro.inference.resume.ResumePlan` instead of
        ``True``). ``config.steps`` is the new total and must be above the steps
        already trained; every other setting that exact resume depends on (batch
        size, accumulation, seed, objective, KL schedule and weight, particles,
        the optimizer's fields, the training set) must be the saved one, and a
        change is refused naming it. The steps still to come follow the
        warm-up/decay of a run of the new total.

        A diverging run (non-finite loss or parameter, a distribution Pyro
        refuses) raises :class:`~scalabl_pyro.inference.train.NonFiniteError` naming
        the last good checkpoint, which is left as it was.

        Laplace trains the MAP of ``s`` and then fits its covariance on
        ``train``; an ensemble trains its K members one after another (their
        histories follow each other).

        The checkpoint records the training set (``MCDataset.identity``: name,
        split, subset, sha256 of the examples); ``resume=True`` refuses a
        ``train`` with other examples. SIGINT (Ctrl-C) or SIGTERM during
        training finishes the current step, saves a resumable checkpoint to
        ``output_dir`` and raises :class:`~scalabl_pyro.inference.interrupt.TrainingInterrupted`
        (a ``KeyboardInterrupt``) naming the step.
        """
        self._check_alive()
        config = config or TrainConfig()
        self._check_train_config(config, bool(resume))
        plan = None
        if resume:  # the one resume decision (inference/resume.py); the CLI passes its own
            if output_dir is None:
                raise ScalaBLError("resume=True needs output_dir (the checkpoint to resume)")
            if not isinstance(resume, ResumePlan):
                resume = plan_resume(output_dir, config, overwrite=overwrite)
            plan = resume
            if Path(plan.run.output_dir) != Path(output_dir):
                raise ScalaBLError(f"resume is a plan for {plan.run.output_dir}, not {output_dir}")
            plan = plan.for_config(config)
            plan.check_model(self.config.to_dict())
            plan.check_data(train)
        elif output_dir is not None:
            ckpt.check_output_dir(
                output_dir,
                resume=False,
                overwrite=overwrite,
                flags=("output_dir", "resume=True", "overwrite=True"),
            )
        elif overwrite:
            raise ScalaBLError("overwrite=True needs output_dir (the checkpoint to replace)")
        kw = dict(validation=validation, eval_samples=eval_samples)
        self.train_data = train.identity()
        if self.method == "ensemble":
            history = TrainHistory()
            members = []
            for k in range(self.config.ensemble_size):
                self.subspace.reset_lora(ens.member_seed(self.config.seed, k))
                self._build_guide()
                cfg_k = replace(config, seed=config.seed + k)
                h = self._fit_once(train, cfg_k, output_dir=None, resume=None, family="mle", **kw)
                history.steps += h.steps
                history.validation += h.validation
                members.append(ens.member_state(self.subspace, self.guide))
            self.members = members
            ens.load_member(self.subspace, self.guide, members[0])
            self.history, self._trainer = history, None  # no optimizer state: not resumable
        else:
            family = "delta" if self.method == "laplace" else self.config.guide
            self._fit_once(
                train,
                config,
                output_dir=output_dir,
                resume=plan,
                family=family,
                save_at_end=False,
                **kw,
            )
            if self.method == "laplace":
                self.fit_laplace(train)
        if output_dir is not None:
            if self._trainer is not None:
                self._save_from_main(self._trainer, output_dir)
            else:
                self.save_pretrained(output_dir)
        return self.history

    def _check_train_config(self, config: TrainConfig, resume: bool) -> None:
        """Training settings the method cannot honour."""
        m = self.method
        if config.objective == "reference" and m != "scalabl":
            raise ScalaBLError(
                f"objective='reference' is the official ScalaBL recipe; method {m!r} trains with "
                "objective='elbo'"
            )
        if (m in POINT_S_METHODS or m == "laplace") and config.num_particles > 1:
            raise ScalaBLError(
                f"method {m!r} trains point estimates, so num_particles={config.num_particles} "
                "samples would all be the same; use num_particles=1"
            )
        if m == "ensemble" and resume:
            raise ScalaBLError(
                "an ensemble cannot be resumed (its members are saved only when all are trained); "
                "train it again without resume"
            )

    def fit_laplace(self, data: MCDataset, *, batch_size: int = 8) -> torch.Tensor:
        """Set the Laplace covariance ``H^-1`` at the current MAP of ``s``; returns it (D x D).

        ``H`` is the negative log joint's Hessian (GGN or exact, see
        ``ScalaBLConfig.laplace_hessian``) summed over ``data`` (the training set).
        """
        self._check_alive()
        if not isinstance(self.guide, LaplaceGuide):
            raise ScalaBLError(f"fit_laplace is for method 'laplace', not {self.method!r}")
        self.guide.set_covariance(None)
        h = negative_log_joint_hessian(
            self.model,
            self.guide,
            self.format_for(data),
            data,
            kind=self.config.laplace_hessian,
            batch_size=batch_size,
            max_examples=self.config.laplace_max_examples,
            seed=self.config.seed,
            device=self.device,
        )
        return fit_laplace(self.guide, h)

    def _fit_once(
        self,
        train: MCDataset,
        config: TrainConfig,
        *,
        validation: MCDataset | None,
        output_dir: str | Path | None,
        resume: ResumePlan | None,
        eval_samples: int,
        family: str,
        save_at_end: bool = True,
    ) -> TrainHistory:
        """One training run of the current model and guide (``family`` picks the ELBO)."""
        self.train_config = config
        trainer = Trainer(
            self.model,
            self.guide,
            family,
            self.format_for(train),
            train,
            config,
            self.device,
        )
        self._trainer = trainer
        if resume is not None:  # the parameters are read here, once
            self.load_parameters(resume.checkpoint)
            if isinstance(self.guide, LaplaceGuide):
                self.guide.set_covariance(None)  # continue the MAP training of s
            # one history object, appended by the trainer and saved by every checkpoint
            self.history = TrainHistory.from_dict(resume.checkpoint.history())
            trainer.load_state_dict(resume.trainer_state, self.history)
        else:
            trainer.history = self.history = TrainHistory()
        last_good = _LastGood(output_dir, trainer.step_count if resume is not None else None)

        def evaluate(step: int) -> dict:
            assert validation is not None
            out: dict = self.evaluate(validation, num_samples=eval_samples, progress=False)
            if not isinstance(self.guide, AutoDelta):  # the posterior's spread over training
                out["posterior_by_site"] = posterior_spread_by_site(self.model, self.guide)
            return out

        def checkpoint_fn(step: int) -> None:
            if output_dir is not None:
                self._save_from_main(trainer, output_dir)
                last_good.step = step

        try:
            with stop_after_step() as request:
                if trainer.distributed is None:  # several processes: signals act as before
                    trainer.step = stopping_steps(trainer.step, request, config.steps)
                try:
                    self.history = trainer.run(
                        evaluate if validation is not None else None, checkpoint_fn
                    )
                except TrainingInterrupted as e:
                    raise self._save_interrupted(e, trainer, output_dir, last_good) from None
        except NonFiniteError as e:
            raise NonFiniteError(f"{e}; {last_good.describe()}", e.step, e.loss) from e
        finally:
            self.history = trainer.history
        if output_dir is not None and save_at_end and last_good.step != trainer.step_count:
            self._save_from_main(trainer, output_dir)  # unless the last periodic save was this step
        return self.history

    def _save_interrupted(
        self,
        e: TrainingInterrupted,
        trainer: Trainer,
        output_dir: str | Path | None,
        last_good: _LastGood,
    ) -> TrainingInterrupted:
        """After a signal: save the whole step just trained (unless saved already), say so."""
        self.history = trainer.history
        saved = None
        if output_dir is not None:
            if last_good.step != trainer.step_count:
                self._save_from_main(trainer, output_dir)
            saved = str(output_dir)
        message = _interrupted_message(e, trainer.config.steps, saved)
        return TrainingInterrupted(message, step=e.step, signum=e.signum, saved=saved)

    def _save_from_main(self, trainer: Trainer, output_dir: str | Path) -> None:
        """Save (rank 0 only under several processes; the others wait for it)."""
        if trainer.distributed is None:
            self.save_pretrained(output_dir)
            return
        if trainer.distributed.is_main:
            self.save_pretrained(output_dir)
        trainer.distributed.barrier()

    # ----------------------------------------------------------- prediction
    def posterior_mean(self) -> dict[str, torch.Tensor]:
        """The posterior mean (median for point masses) of every latent site."""
        return posterior_point(self.guide, self.model.site_names)

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
    ) -> Prediction:
        """The method's predictive distribution on ``data``.

        BMA over ``num_samples`` posterior draws (scalabl, blob, laplace) or
        dropout masks (mc_dropout), or the posterior mean with ``mode='mean'``;
        an ensemble averages its K members; point estimates (mle, map and
        point-mass guides) give one deterministic pass (S = 1).

        ``width`` moves every draw of ``s`` that many times as far from the
        posterior mean (``mu + width (s - mu)``: the posterior's std times
        ``width``; 1 is the fitted posterior, 0 the mean). A post-hoc knob for a
        Gaussian posterior over ``s`` (scalabl, laplace): choose it on a
        validation split, as temperature scaling is, never on test; see
        ``docs/calibration.md`` for what it did in the overfitting regime.

        ``temperature`` divides each draw's class scores by ``T`` before the
        draws are averaged (:meth:`Prediction.tempered`), so the epistemic
        spread between draws survives; fit it on a validation split with
        :func:`~scalabl_pyro.inference.temperature.fit_bma_temperature`.
        """
        self._check_alive()
        if temperature is not None:
            kw = dict(num_samples=num_samples, mode=mode, batch_size=batch_size)
            kw.update(max_rows=max_rows, seed=seed, progress=progress, width=width)
            return self.predict(data, **kw).tempered(temperature)

        def run(latents=None, stochastic=()) -> Prediction:
            return predict(
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

        if width != 1.0:
            return run(self._widened_draws(width, num_samples, mode, seed))
        if self.method == "ensemble" and self.members:
            return ens.predict_members(self.subspace, self.guide, self.members, run)
        if self.method == "mc_dropout" and mode == "bma":
            if num_samples < 1:
                raise ScalaBLError(f"num_samples must be >= 1, got {num_samples}")
            point = self.posterior_mean()
            latents = {k: v[None].expand(num_samples, *v.shape) for k, v in point.items()}
            return run(latents, dropout_modules(self.subspace))
        return run()

    def _widened_draws(
        self, width: float, num_samples: int, mode: str, seed: int | None
    ) -> dict[str, torch.Tensor]:
        """Posterior draws of ``s`` moved ``width`` times as far from the posterior mean."""
        if not (math.isfinite(width) and width >= 0):
            raise ScalaBLError(f"width must be a finite number >= 0, got {width}")
        if not gaussian_over_s(self.method, self.config.guide):
            raise ScalaBLError(
                f"width scales a Gaussian posterior over s, which method {self.method!r} "
                f"(guide {self.config.guide!r}) does not have; drop width"
            )
        if mode != "bma":
            raise ScalaBLError("width scales the draws of a BMA; drop width or use mode='bma'")
        from scalabl_pyro.inference.predict import draw_latents, posterior_point

        mean = posterior_point(self.guide, self.model.site_names)
        draws = draw_latents(self.model, self.guide, num_samples, seed=seed)
        return {n: mean[n] + width * (v - mean[n]) for n, v in draws.items()}

    def evaluate(self, data: MCDataset, **predict_kwargs) -> dict[str, float]:
        """Accuracy, ECE, NLL and Brier on ``data`` (keyword args go to :meth:`predict`)."""
        return self.predict(data, **predict_kwargs).metrics()

    # --------------------------------------------------------------- export
    def save_pretrained(self, path: str | Path) -> Path:
        """Write a checkpoint directory atomically (layout: ``io/checkpoint.py``)."""
        self._check_alive()
        meta = {
            "library": "scalabl-pyro",
            "version": __version__,
            "config": self.config.to_dict(),
            "guide_family": self.config.guide,
            "prior_scale": self.config.prior_scale,
            "site_names": self.model.site_names,
            "lora_shapes": self.subspace.lora_shapes(),
            "target_modules": list(self.config.target_modules),
            "num_data": self.model.num_data,
            "num_variational_parameters": self.num_variational_parameters,
            "method": self.method,
            "num_extra_parameters": self.num_extra_parameters,
            "num_members": len(self.members),
        }
        if self.config.task_format == "letter":
            fmt = self._letter_format(self.config.num_classes)
            meta["class_tokens"] = list(fmt.answer_tokens)
            meta["class_token_ids"] = fmt.class_token_ids.tolist()
        if self.train_config is not None:
            meta["train_config"] = self.train_config.to_dict()
        if self.train_data is not None:
            meta[ckpt.TRAIN_DATA_KEY] = self.train_data
        adapter_state, adapter_config = self._adapter()
        contents = ckpt.CheckpointContents(
            meta=meta,
            lora=self.subspace.lora_state(),
            guide=self.guide.state_dict(),
            adapter_state=adapter_state,
            adapter_config=adapter_config,
            history=self.history.to_dict(),
            trainer_state=self._trainer.state_dict() if self._trainer is not None else None,
            members=ens.pack_members(self.members) if self.members else None,
        )
        return ckpt.save_checkpoint(path, contents)

    def export_adapter(self, path: str | Path) -> Path:
        """Write only the plain peft adapter of the posterior-mean model (for peft users).

        ``adapter_config.json`` names the base model (:func:`checkpoint.adapter_base`:
        hub id and commit, or the absolute path of a local or embedded model), so
        ``peft.AutoPeftModelForCausalLM.from_pretrained(path)`` loads the
        posterior-mean model on its own.
        """
        self._check_alive()
        state, config = self._adapter()
        return ckpt.write_atomic_dir(path, lambda tmp: ckpt.save_adapter(tmp, state, config))

    def _adapter(self):
        """The posterior-mean peft adapter: state dict and a config that names the base."""
        state, config = self.subspace.adapter_state(self.posterior_mean())
        base = self.subspace.peft_model.get_base_model()
        config.base_model_name_or_path, config.revision = ckpt.adapter_base(base)
        config.task_type = "CAUSAL_LM"  # what AutoPeftModelForCausalLM requires
        return state, config

    def merge_and_unload(self) -> PreTrainedModel:
        """A plain Hugging Face model with the posterior mean merged in, for serving.

        peft's ``merge_and_unload`` semantics: the adapters are consumed (no
        copy of the base model is made) and this ScalaBL instance cannot be
        used afterwards; reload a checkpoint to keep working with it.
        """
        self._check_alive()
        point = self.posterior_mean()
        merged = self.subspace.merge_and_unload(point)
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
        """Parameters the method adds over plain LoRA (the paper's parameter-cost column).

        0 for mle, map and mc_dropout; ``(K - 1) x`` the LoRA parameters for an
        ensemble; the variational parameters for scalabl (``2 r L`` mean-field)
        and blob (one ``sigma`` per entry of every ``A``); the covariance
        ``D (D + 1) / 2`` for laplace.
        """
        m = self.method
        if m in DETERMINISTIC_METHODS or m == "mc_dropout":
            return 0
        if m == "ensemble":
            return (self.config.ensemble_size - 1) * self.subspace.num_lora_parameters()
        if m == "laplace":
            return covariance_parameters(self.subspace.num_latents)
        return count_free_parameters(self.guide)

    def summary(self) -> str:
        """One paragraph describing the model (layers, latents, parameter counts)."""
        sub = self.subspace
        return (
            f"{self.method} on {self.config.base_model}: {len(sub.site_names)} adapted layers "
            f"(targets {', '.join(self.config.target_modules)}), rank {sub.rank}, "
            f"{sub.num_latents} latent dims; guide {self.config.guide} with "
            f"{self.num_variational_parameters} variational parameters; "
            f"{sub.num_lora_parameters()} LoRA parameters; "
            f"prior sigma_p={self.config.prior_scale}; "
            f"{self.num_extra_parameters} parameters beyond plain LoRA"
        )


def _interrupted_message(e: TrainingInterrupted, steps: int, saved: str | None) -> str:
    where = (
        f"saved a resumable checkpoint of step {e.step} to {saved}"
        if saved is not None
        else "nothing was saved (no output_dir, or an ensemble, saved only when complete)"
    )
    return f"interrupted by {e.signal_name} after step {e.step} of {steps}; {where}"


class _LastGood:
    """The newest checkpoint a diverged run leaves behind, for its error message."""

    def __init__(self, output_dir: str | Path | None, step: int | None) -> None:
        self.output_dir, self.step = output_dir, step
        self.existed = output_dir is not None and (Path(output_dir) / ckpt.CONFIG_FILE).is_file()

    def describe(self) -> str:
        if self.output_dir is None:
            return "nothing was saved (no output_dir)"
        if self.step is not None:
            return f"the last good checkpoint, {self.output_dir} (step {self.step}), is intact"
        if self.existed:
            return f"the checkpoint that was in {self.output_dir} is intact (not replaced)"
        return f"nothing was saved to {self.output_dir}"
