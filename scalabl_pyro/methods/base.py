"""What a method is: :class:`Method`, the object the facade, config, CLI and benchmark ask.

A method states, in its own module (``methods/<name>.py`` or ``methods/<name>/``):

* its **settings**: the guide family it implies, which options it uses, the
  objectives it trains with, its defaults (dropout, initial scale);
* how it **builds** its latent family, Pyro model options and guide
  (:meth:`Method.build_program`, :meth:`Method.fresh_guide`), and so its
  optimizer groups: the family's LoRA factors, and the guide's parameters as
  the variational group (``inference/train.py``);
* how it **trains** (:meth:`Method.fit`: one run of :meth:`Method.train_once`
  by default, with the objective ``TrainConfig.objective`` names, see
  ``program/objectives.py``; a Laplace fit after it, or K ensemble members);
* how it **predicts** (:meth:`Method.predict`: BMA over the guide's draws by default);
* how it **saves and exports** (:meth:`Method.checkpoint_contents`,
  :meth:`Method.load_parameters`, :meth:`Method.adapter`: the plain peft
  adapter of its posterior-mean model).

This base class is ScalaBL's own behaviour; the other methods override what
differs. Nothing here imports torch at module level: the registry is read by
``ScalaBLConfig`` and by ``scalabl --help``, which must stay light. The heavy
parts are imported inside the methods that use them.

The facade (:class:`~scalabl_pyro.api.ScalaBL`) passes itself as ``sbl`` to
the hooks that act on a built model (a strategy and its context): they read
its parts (``config``, ``tokenizer``, ``subspace``, ``model``, ``guide``,
``members``, ``device``, ``history``) and call its public methods;
:meth:`Method.train_once` alone sets the run's state on it (``train_config``,
``history`` and the trainer whose optimizer state a checkpoint saves).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from scalabl_pyro.errors import ScalaBLError

#: Guide families that are a point mass (``program.families``: delta and mle).
POINT_MASS_GUIDES = ("delta", "mle")
#: The guide families with a diagonal Gaussian per site.
MEAN_FIELD_GUIDES = ("mean_field", "log_mean_field")
#: Initial posterior std of ``s`` for the library's Gaussian guides (``docs/calibration.md``).
DEFAULT_INIT_SCALE = 0.4
#: The official code's initial scale (``log_mean_field`` draws U[0.05/sqrt 2, 0.05]); BLoB's too.
REFERENCE_INIT_SCALE = 0.05

BenchmarkEntry = tuple[dict[str, Any], dict[str, Any], int]


@dataclass(frozen=True)
class FitSteps:
    """What the facade lends :meth:`Method.fit`: one training run, and a fresh guide.

    ``fit_once(train, config, *, family, output_dir, resume)`` trains the
    current model and guide once (checkpoints, interrupts, resume) and returns
    its history; ``rebuild_guide()`` builds the guide anew at the family's
    initial values.
    """

    fit_once: Callable[..., Any]
    rebuild_guide: Callable[[], None]


@dataclass
class FitOutcome:
    """What :meth:`Method.fit` hands back: the history, members, and whether it can resume."""

    history: Any
    members: list | None = None  # an ensemble's member states (None: keep the facade's)
    resumable: bool = True  # False: no optimizer state to save (an ensemble)


class Method:
    """ScalaBL's behaviour; a baseline subclasses it and overrides what differs."""

    #: The registry key (``ScalaBLConfig.method``).
    name: ClassVar[str] = "scalabl"
    #: Position in :func:`~scalabl_pyro.methods.registry.method_names` (the documented order).
    order: ClassVar[int] = 100
    #: One line: what is random and how it predicts (``methods/__init__.py`` has the table).
    summary: ClassVar[str] = "s per layer, guide family ScalaBLConfig.guide"
    #: The guide family the method implies (None: ``ScalaBLConfig.guide`` chooses).
    implied_guide: ClassVar[str | None] = None
    #: Whether ``s`` is a point estimate trained by maximum likelihood / MAP.
    point_s: ClassVar[bool] = False
    #: Whether ``--prior-scale`` (the prior of ``s``) shapes the method.
    uses_prior_scale: ClassVar[bool] = True
    #: Whether ``ensemble_size`` shapes the method.
    uses_ensemble_size: ClassVar[bool] = False
    #: Whether ``lm_head`` may be adapted.
    adapts_lm_head: ClassVar[bool] = True
    #: The training objectives it accepts (``TrainConfig.objective``).
    objectives: ClassVar[tuple[str, ...]] = ("elbo", "reference")
    #: LoRA dropout when ``ScalaBLConfig.dropout`` is unset.
    default_dropout: ClassVar[float] = 0.0
    #: Benchmark entries this method contributes: name -> (model, train overrides, BMA samples).
    benchmark: ClassVar[dict[str, BenchmarkEntry]] = {
        "scalabl": ({"guide": "mean_field"}, {}, 10),
        "full_rank": ({"guide": "full_rank"}, {}, 10),
        "low_rank": ({"guide": "low_rank"}, {}, 10),
        "block": ({"guide": "block"}, {}, 10),
        "reference": ({"guide": "log_mean_field"}, {"objective": "reference"}, 10),
    }

    # ------------------------------------------------------------ settings
    def resolve_guide(self, guide: str) -> str:
        """The guide family a config with ``guide`` gets (a clash is a one-line error)."""
        implied = self.implied_guide
        if implied is None:
            return guide
        if guide not in ("mean_field", implied):
            raise ScalaBLError(
                f"guide={guide!r} applies to method 'scalabl' only; method "
                f"{self.name!r} implies guide {implied!r} (drop guide or use method='scalabl')"
            )
        return implied

    def check_config(self, config: Any) -> None:
        """Refuse ``ScalaBLConfig`` settings the method cannot honour (after the guide is set)."""
        if not self.adapts_lm_head and "lm_head" in config.target_modules:
            raise ScalaBLError(
                f"method {self.name!r} does not adapt lm_head; drop lm_head from target_modules"
            )

    def label(self, guide: str, *, flags: bool = False) -> str:
        """What chose the posterior, for messages: ``guide X`` (scalabl) or ``method M``."""
        dash = "--" if flags else ""
        if self.implied_guide is None:
            return f"{dash}guide {guide}"
        return f"{dash}method {self.name}"

    def gaussian_over_s(self, guide: str) -> bool:
        """Whether the posterior is a Gaussian over ``s`` (what ``predict(width=)`` scales)."""
        return guide not in POINT_MASS_GUIDES

    def predicts_one_pass(self, guide: str) -> bool:
        """Whether prediction is one deterministic pass (S = 1 whatever the sample count)."""
        return guide in POINT_MASS_GUIDES

    def fixed_predictive(self, guide: str, meta: dict) -> str | None:
        """Why sample count and mode change nothing for a saved run (None: they matter).

        The clause ends where "<flags> would be ignored" follows.
        """
        if self.predicts_one_pass(guide):
            what = self.label(guide)
            return (
                f"the checkpoint's {what} is a point mass, so every posterior sample is "
                "the same and"
            )
        return None

    def trains_a_point(self, guide: str) -> bool:
        """Whether training fits a point (no particles, no initial scale to set)."""
        return guide in POINT_MASS_GUIDES

    def point_latents(self, guide: str) -> bool:
        """Whether the posterior over the latents is a point (nothing for diagnostics to read)."""
        return self.point_s or guide in POINT_MASS_GUIDES

    def default_init_scale(self, guide: str) -> float:
        """The posterior's initial std when ``init_scale`` is unset."""
        return REFERENCE_INIT_SCALE if guide == "log_mean_field" else DEFAULT_INIT_SCALE

    def uses_init_scale(self, guide: str) -> bool:
        """Whether training starts from a Gaussian whose std is the initial scale."""
        return self.gaussian_over_s(guide)

    def check_train_config(self, config: Any, resume: bool) -> None:
        """Refuse ``TrainConfig`` settings the method cannot honour."""
        if config.objective not in self.objectives:
            raise ScalaBLError(
                f"objective={config.objective!r} is the official ScalaBL recipe; method "
                f"{self.name!r} trains with objective='elbo'"
            )
        if self.point_s and config.num_particles > 1:
            raise ScalaBLError(
                f"method {self.name!r} trains point estimates, so num_particles="
                f"{config.num_particles} samples would all be the same; use num_particles=1"
            )

    # ------------------------------------------------------------ building
    def build_program(self, config: Any, base_model: Any, tokenizer: Any, *, num_data: Any = None):
        """The latent family, the Pyro model and the initial posterior scales, from a config.

        ``num_data`` is the data plate's size the model is built with (a
        checkpoint's training-set size; None until a trainer passes one).
        """
        from scalabl_pyro.program.formats import format_for
        from scalabl_pyro.program.model import ScalaBLModel, pyro_settings
        from scalabl_pyro.utils.rng import model_devices, seeded

        class_ids = None
        if config.task_format == "letter":
            device = next(base_model.parameters()).device
            class_ids = format_for(config, tokenizer).class_token_ids.to(device)
        family = self.build_family(config, base_model, class_ids)
        init_scales = family.initial_scales(config.initial_scale, config.seed)
        if config.reference_prior_quirk:
            family.set_reference_prior_quirk(init_scales)
        with pyro_settings(), seeded(config.seed, model_devices(base_model)):
            # PyroModules are built under the settings
            options = self.model_options(config)
            model = ScalaBLModel(family, num_data=num_data, **options)
        return family, model, init_scales

    def fresh_guide(self, config: Any, model: Any, family: Any, init_scales: Any, device: Any):
        """The guide at its initial values, its parameters built; the family follows it."""
        import torch

        from scalabl_pyro.program.model import pyro_settings
        from scalabl_pyro.utils.rng import model_devices, seeded

        with pyro_settings(), seeded(config.seed, model_devices(family.peft_model)):
            guide = self.build_guide(config, model, family, init_scales)
            with torch.no_grad():
                guide()  # build the variational parameters now
        guide.to(device)
        family.follow(guide)
        return guide

    def build_family(self, config: Any, base_model: Any, class_token_ids: Any):
        """The latent family: subspace LoRA with an ``s`` per adapted layer."""
        from scalabl_pyro.program.adapters import SubspaceLoRA

        return SubspaceLoRA(
            base_model,
            rank=config.rank,
            alpha=config.alpha,
            dropout=config.lora_dropout,
            target_modules=config.target_modules,
            class_token_ids=class_token_ids,
            seed=config.seed,
            prior_scale=config.prior_scale,
        )

    def model_options(self, config: Any) -> dict[str, Any]:
        """Keyword arguments of :class:`~scalabl_pyro.program.model.ScalaBLModel` (priors)."""
        return {}

    def build_guide(self, config: Any, model: Any, family: Any, init_scales: Any):
        """The guide of ``config.guide`` at the family's initial values (not yet run)."""
        from scalabl_pyro.program.guides import build_guide

        return build_guide(
            config.guide,
            model,
            family.init_values,
            init_scale=config.initial_scale,
            low_rank=config.guide_rank,
            init_scales=init_scales,
        )

    def training_family(self, config: Any) -> str:
        """The guide family whose ELBO estimator trains it (analytic KL for mean-field)."""
        return config.guide

    # ------------------------------------------------------------ training
    def fit(self, sbl: Any, train: Any, config: Any, steps: FitSteps, **run: Any) -> FitOutcome:
        """Train: one run of the model and guide (``run``: ``output_dir``, ``resume``)."""
        family = self.training_family(sbl.config)
        return FitOutcome(steps.fit_once(train, config, family=family, **run))

    def train_once(
        self,
        sbl: Any,
        train: Any,
        config: Any,
        *,
        family: str,
        output_dir: Any = None,
        resume: Any = None,
        validation: Any = None,
        eval_samples: int = 4,
        save_at_end: bool = False,
    ) -> Any:
        """One training run of ``sbl``'s model and guide (``family`` picks the ELBO estimator).

        Builds the :class:`~scalabl_pyro.inference.train.Trainer` (``sbl``'s
        ``_trainer``, saved with every checkpoint), restores a run to resume,
        and drives it with :func:`~scalabl_pyro.inference.run.run_training`.
        ``resume`` is the :class:`~scalabl_pyro.inference.resume.ResumePlan` the
        facade decided (or None): its checkpoint's parameters are read here, once.
        """
        from pyro.infer.autoguide import AutoDelta

        from scalabl_pyro.inference.predict import posterior_spread_by_site
        from scalabl_pyro.inference.run import run_training
        from scalabl_pyro.inference.train import Trainer, TrainHistory

        sbl.train_config = config
        fmt = sbl.format_for(train)
        trainer = Trainer(sbl.model, sbl.guide, family, fmt, train, config, sbl.device)
        sbl._trainer = trainer
        if resume is not None:  # the plan of inference/resume.py: parameters read once, here
            sbl.load_parameters(resume.checkpoint)
            self.before_resume(sbl.guide)
            # one history object, appended by the trainer and saved by every checkpoint
            sbl.history = TrainHistory.from_dict(resume.checkpoint.history())
            trainer.load_state_dict(resume.trainer_state, sbl.history)
        else:
            trainer.history = sbl.history = TrainHistory()

        def evaluate(step: int) -> dict:
            out: dict = sbl.evaluate(validation, num_samples=eval_samples, progress=False)
            if not isinstance(sbl.guide, AutoDelta):  # the posterior's spread over training
                out["posterior_by_site"] = posterior_spread_by_site(sbl.model, sbl.guide)
            return out

        try:
            return run_training(
                trainer,
                output_dir=output_dir,
                resumed=resume is not None,
                save=lambda: sbl.save_pretrained(output_dir),
                evaluate=evaluate if validation is not None else None,
                save_at_end=save_at_end,
            )
        finally:
            sbl.history = trainer.history

    def before_resume(self, guide: Any) -> None:
        """Put a guide just loaded from a checkpoint into its training state (nothing here)."""

    # ---------------------------------------------------------- prediction
    def predictive(
        self,
        sbl: Any,
        run: Callable[..., Any],
        *,
        num_samples: int,
        mode: str,
        width: float = 1.0,
        seed: int | None = 0,
    ):
        """``sbl.predict``'s result: :meth:`predict`, or BMA over widened draws of ``s``.

        ``run(latents=None, stochastic=())`` is one call of
        :func:`~scalabl_pyro.inference.predict.predict` on the data. ``width != 1``
        moves every draw ``width`` times as far from the posterior mean: only
        for a Gaussian over ``s`` (:meth:`gaussian_over_s`).
        """
        if width == 1.0:
            return self.predict(sbl, run, num_samples=num_samples, mode=mode)
        guide = sbl.config.guide
        if not self.gaussian_over_s(guide):
            raise ScalaBLError(
                f"width scales a Gaussian posterior over s, which method {self.name!r} "
                f"(guide {guide!r}) does not have; drop width"
            )
        from scalabl_pyro.inference.predict import widened_draws

        return run(widened_draws(sbl.model, sbl.guide, width, num_samples, mode, seed))

    def predict(self, sbl: Any, run: Callable[..., Any], *, num_samples: int, mode: str):
        """The predictive distribution: ``run()`` is BMA over the guide's draws (or its mean)."""
        return run()

    # ------------------------------------------------------ parameters, i/o
    def num_extra_parameters(self, sbl: Any) -> int:
        """Parameters the method adds over plain LoRA (the variational parameters here)."""
        from scalabl_pyro.program.guides import count_free_parameters

        return count_free_parameters(sbl.guide)

    def checkpoint_contents(self, sbl: Any, adapter: tuple, trainer_state: dict | None) -> Any:
        """Everything a checkpoint directory holds (layout: ``io/checkpoint.py``).

        ``adapter`` is the posterior-mean peft adapter (state dict, config);
        ``trainer_state`` the optimizer state of the run, if it can resume.
        """
        from scalabl_pyro import __version__
        from scalabl_pyro.io import checkpoint as ckpt
        from scalabl_pyro.program.formats import format_for

        config = sbl.config
        meta = {
            "library": "scalabl-pyro",
            "version": __version__,
            "config": config.to_dict(),
            "guide_family": config.guide,
            "prior_scale": config.prior_scale,
            "site_names": sbl.model.site_names,
            "lora_shapes": sbl.subspace.lora_shapes(),
            "target_modules": list(config.target_modules),
            "num_data": sbl.num_data,
            "num_variational_parameters": sbl.num_variational_parameters,
            "method": self.name,
            "num_extra_parameters": self.num_extra_parameters(sbl),
            "num_members": len(sbl.members),
        }
        if config.task_format == "letter":
            fmt = format_for(config, sbl.tokenizer)
            meta["class_tokens"] = list(fmt.answer_tokens)
            meta["class_token_ids"] = fmt.class_token_ids.tolist()
        if sbl.train_config is not None:
            meta["train_config"] = sbl.train_config.to_dict()
        if sbl.train_data is not None:
            meta[ckpt.TRAIN_DATA_KEY] = sbl.train_data
        if sbl.temperature is not None:  # ScalaBL.calibrate: the recommended recipe
            meta["temperature"] = sbl.temperature
            meta["temperature_from"] = sbl.temperature_from
        adapter_state, adapter_config = adapter
        return ckpt.CheckpointContents(
            meta=meta,
            lora=sbl.subspace.lora_state(),
            guide=sbl.guide.state_dict(),
            adapter_state=adapter_state,
            adapter_config=adapter_config,
            history=sbl.history.to_dict(),
            trainer_state=trainer_state,
            **self.checkpoint_extras(sbl),
        )

    def load_parameters(self, sbl: Any, checkpoint: Any) -> list:
        """Copy a checkpoint's LoRA factors and guide into ``sbl``; returns its members."""
        from scalabl_pyro.io import checkpoint as ckpt

        checkpoint.check_files()
        checkpoint.check_compatible(sbl.model.site_names, sbl.subspace.lora_shapes())
        sbl.subspace.load_lora_state(checkpoint.lora())
        state = checkpoint.guide_state()
        try:
            sbl.guide.load_state_dict({k: v.to(sbl.device) for k, v in state.items()})
        except RuntimeError as e:
            raise ScalaBLError(
                f"{checkpoint.path / ckpt.GUIDE_FILE} does not fit the {sbl.config.guide} guide "
                f"of this model ({str(e).splitlines()[0]}); load it with the config it was saved "
                "with"
            ) from e
        return self.load_extras(checkpoint)

    def adapter(self, sbl: Any) -> tuple:
        """The posterior-mean peft adapter: state dict and a config that names the base."""
        from scalabl_pyro.io import checkpoint as ckpt

        state, config = sbl.subspace.adapter_state(sbl.posterior_mean())
        base = sbl.subspace.peft_model.get_base_model()
        config.base_model_name_or_path, config.revision = ckpt.adapter_base(base)
        config.task_type = "CAUSAL_LM"  # what AutoPeftModelForCausalLM requires
        return state, config

    def describe(self, sbl: Any) -> str:
        """One paragraph describing a built model (layers, latents, parameter counts)."""
        sub, config = sbl.subspace, sbl.config
        return (
            f"{self.name} on {config.base_model}: {len(sub.site_names)} adapted layers "
            f"(targets {', '.join(config.target_modules)}), rank {sub.rank}, "
            f"{sub.num_latents} latent dims; guide {config.guide} with "
            f"{sbl.num_variational_parameters} variational parameters; "
            f"{sub.num_lora_parameters()} LoRA parameters; "
            f"prior sigma_p={config.prior_scale}; "
            f"{self.num_extra_parameters(sbl)} parameters beyond plain LoRA"
        )

    def checkpoint_extras(self, sbl: Any) -> dict[str, Any]:
        """Tensors beyond LoRA and guide that a checkpoint holds (``members`` of an ensemble)."""
        return {}

    def load_extras(self, checkpoint: Any) -> list:
        """The members a checkpoint holds (an ensemble's; none for one adapter)."""
        return []
