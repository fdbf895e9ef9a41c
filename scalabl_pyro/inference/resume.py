"""Resume: whether a run may continue a checkpoint, and how (one path for ``fit`` and the CLI).

A resumed run is *exact*: trained to ``steps`` from a checkpoint, it takes the
same updates as one uninterrupted run of ``steps`` with the same settings. The
state that carries over is the parameters, the optimizer and scheduler states
and the step counter (``inference/train.py``); everything else that decides an
update comes from the :class:`~scalabl_pyro.inference.train.TrainConfig`, so
each of its fields is in exactly one of three groups (a test checks it):

* :data:`MUST_MATCH`: a change would make the resumed steps differ from the
  uninterrupted run's (or be silently overruled by the restored optimizer
  state). Refused, naming the setting, its saved and its new value and the fix.
* :data:`SAFE_TO_CHANGE`: ``steps`` (a larger total: the warm-up/decay of the
  steps still to come is that of a run of the new total, and nothing already
  trained is redone) and ``gradient_checkpointing`` (the same arithmetic, less
  memory).
* :data:`NOT_TRAINING`: what is shown or saved along the way, never what is
  computed (``progress``, ``eval_every``, ``checkpoint_every``).

The model's settings that shape the program (:data:`MODEL_MUST_MATCH`: method,
guide, targets, rank, prior, ...) must be the saved ones too
(:meth:`ResumePlan.check_model`).

Derived defaults are compared resolved: ``var_lr=None`` with ``lr=1e-2`` is the
saved ``var_lr=0.1``. The training set is compared by fingerprint
(:func:`~scalabl_pyro.io.checkpoint.check_train_data`).

:func:`read_saved_run` opens the checkpoint (output directory, trainer state)
and :func:`decide_resume` compares; :func:`plan_resume` does both. The CLI
calls them in two steps (it fills the options not given from the saved run in
between), ``ScalaBL.fit(resume=True)`` in one, and the CLI hands its
:class:`ResumePlan` to ``fit``, so each check runs once and the parameters are
read once, by ``fit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.io import checkpoint as ckpt

if TYPE_CHECKING:  # imported where used: the CLI refuses a bad --output before torch loads
    from scalabl_pyro.inference.train import TrainConfig

MUST_MATCH: dict[str, str] = {
    # field -> why exact resume needs the saved value
    "batch_size": "the data stream, the plate's N/B scale and the cyclic KL period",
    "grad_accum": "which micro-batches make each step",
    "seed": "the data order of every epoch and each step's posterior draws",
    "partial_last_batch": "the data stream (each epoch's last batch)",
    "objective": "the loss and the optimizers",
    "kl_schedule": "the KL weight of every step",
    "kl_weight": "the KL weight of every step",
    "kl_warmup_steps": "the KL weight of every step",
    "num_particles": "the ELBO estimate",
    "lr": "the restored optimizer keeps its own (base) learning rates",
    "var_lr": "the restored optimizer keeps its own (base) learning rates",
    "weight_decay": "the restored optimizer keeps its own weight decay",
    "adam_eps": "the restored optimizer keeps its own eps",
    "warmup_ratio": "the learning-rate schedule",
    "reference_kl_lr": "the KL step's learning rate",
    "max_grad_norm": "the clipped updates",
    "bf16": "the arithmetic of every forward and backward pass",
}
"""The settings an exact resume depends on, and why."""

SAFE_TO_CHANGE: dict[str, str] = {
    "steps": "a larger total trains more steps; the schedule of the coming steps is the new "
    "total's, as in an uninterrupted run of it (not above the steps done: refused)",
    "gradient_checkpointing": "recomputes activations in the backward pass: the same "
    "arithmetic, traded for memory",
}
"""Settings a resumed run may change, and why that is safe."""

NOT_TRAINING: dict[str, str] = {
    "progress": "the progress bar only",
    "eval_every": "when validation runs (under its own seed, outside the training steps)",
    "checkpoint_every": "when checkpoints are written (a save changes no state)",
}
"""Settings that are not part of the training arithmetic."""

MODEL_MUST_MATCH: tuple[str, ...] = (
    "method",
    "guide",
    "guide_rank",
    "task_format",
    "normalization",
    "num_classes",
    "answer_tokens",
    "chat_template",
    "max_length",
    "target_modules",
    "rank",
    "alpha",
    "dropout",
    "prior_scale",
    "lora_prior_scale",
    "reference_prior_quirk",
)
"""The model settings (``ScalaBLConfig``) that shape the program being trained. The rest
may differ: where the base model comes from and how it is loaded (``base_model`` for a
moved copy, ``dtype``, ``device``, ``quantization``, ``trust_remote_code``), what only
the initial values depend on (``seed``, ``init_scale``: the parameters are loaded;
unless ``reference_prior_quirk``, whose prior is built from them), and
what only acts after training (``laplace_*``; an ensemble is never resumed)."""

_RESOLVED = {"var_lr": "resolved_var_lr", "adam_eps": "resolved_adam_eps"}
_RESOLVED["kl_schedule"] = "resolved_kl_schedule"


@dataclass(frozen=True)
class Spelling:
    """How a caller spells options in messages: the API's keywords (default) or CLI flags."""

    output: str = "output_dir"
    resume: str = "resume=True"
    #: TrainConfig field -> CLI flag; empty: the API (``name=value``)
    flags: Mapping[str, str] = field(default_factory=dict)

    @property
    def cli(self) -> bool:
        return bool(self.flags)

    def setting(self, name: str, value: Any) -> str:
        """``lr=0.01`` (API) or ``--lr 0.01`` (CLI; ``no --max-grad-norm`` for None)."""
        if not self.cli:
            return f"{name}={value!r}"
        flag = self.flags.get(name, name)
        return f"no {flag}" if value is None else f"{flag} {value}"

    def where(self, output_dir: str | Path) -> str:
        return f"{self.output} {output_dir}" if self.cli else str(output_dir)


API = Spelling()


@dataclass
class SavedRun:
    """What a checkpoint says about the run it holds (read once)."""

    output_dir: Path
    meta: dict
    trainer_state: dict
    spelling: Spelling = API

    @property
    def step(self) -> int:
        """Optimizer steps already trained."""
        return int(self.trainer_state.get("step", 0))

    @property
    def train_config(self) -> TrainConfig | None:
        """The saved settings (fields an older checkpoint lacks at their defaults), or None."""
        from scalabl_pyro.inference.train import TrainConfig

        saved = self.meta.get("train_config")
        if not isinstance(saved, dict):
            return None
        known = {f.name for f in fields(TrainConfig)}
        try:
            return TrainConfig(**{k: v for k, v in saved.items() if k in known})
        except (TypeError, ValueError):
            return None  # unreadable: the optimizer state is what counts

    @property
    def train_data(self) -> dict | None:
        """The training set's identity (``MCDataset.identity``), if the checkpoint records it."""
        return self.meta.get(ckpt.TRAIN_DATA_KEY)


def read_saved_run(
    output_dir: str | Path, spelling: Spelling = API, *, overwrite: bool = False
) -> SavedRun:
    """Open the checkpoint to continue: the output directory's checks, metadata, trainer state.

    Refuses a directory that is not a resumable checkpoint
    (:func:`~scalabl_pyro.io.checkpoint.check_output_dir`; also asked to
    ``overwrite`` it), or whose trainer state cannot be read. Reads no tensor file.
    """
    flags = (spelling.output, spelling.resume, "--overwrite" if spelling.cli else "overwrite=True")
    ckpt.check_output_dir(output_dir, resume=True, overwrite=overwrite, flags=flags)
    path = Path(output_dir).expanduser()
    meta = ckpt.read_config(path)
    if not isinstance(meta.get("config"), dict):
        raise ScalaBLError(
            f"{spelling.resume}: {spelling.where(output_dir)}: {ckpt.CONFIG_FILE} has no model "
            "config; the checkpoint is damaged or from another tool, so train it again"
        )
    try:
        state = ckpt.load_trainer_state(path)
        int(state["step"])  # type: ignore[index]
    except ScalaBLError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable state is a damaged checkpoint
        raise ScalaBLError(
            f"{spelling.resume}: the training state in {spelling.where(output_dir)} cannot be "
            f"read ({type(e).__name__}); the checkpoint is damaged, so train a new one"
        ) from e
    return SavedRun(Path(output_dir), meta, state, spelling)  # type: ignore[arg-type]


@dataclass
class ResumePlan:
    """A decided resume: the checkpoint (files checked), its state, the settings to train with."""

    run: SavedRun
    config: TrainConfig
    checkpoint: ckpt.Checkpoint
    _data_checked: list = field(default_factory=list, repr=False)

    @property
    def trainer_state(self) -> dict:
        return self.run.trainer_state

    def for_config(self, config: TrainConfig) -> ResumePlan:
        """This plan if it was decided for ``config``, else the decision for ``config``."""
        return self if config == self.config else decide_resume(self.run, config)

    def check_model(self, model_config: Mapping[str, Any]) -> None:
        """Refuse a model built with other :data:`MODEL_MUST_MATCH` settings than the saved one.

        ``model_config`` is ``ScalaBLConfig.to_dict()`` of the model about to be
        trained (the CLI builds it from the checkpoint, so only ``fit`` can differ).
        """
        saved = self.run.meta.get("config") or {}
        keys = MODEL_MUST_MATCH
        if saved.get("reference_prior_quirk"):  # its prior is built from the initial scales
            keys += ("seed", "init_scale")
        differ = [
            k for k in keys if k in saved and k in model_config and saved[k] != model_config[k]
        ]
        if differ:
            sp = self.run.spelling
            now = ", ".join(f"{k}={model_config[k]!r}" for k in differ)
            before = ", ".join(f"{k}={saved[k]!r}" for k in differ)
            raise ScalaBLError(
                f"{sp.resume}: this model's {now} {'differs' if len(differ) == 1 else 'differ'} "
                f"from the checkpoint in {sp.where(self.run.output_dir)} (built with {before}); "
                "load it with ScalaBL.from_pretrained, or train anew into another "
                f"{sp.output}"
            )

    def check_data(self, train, *, flag: str | None = None, fix: str | None = None) -> None:
        """Refuse examples other than the checkpoint's training set (by fingerprint).

        Once per data set object: the CLI checks before it loads the model, and
        ``fit`` then finds it done.
        """
        if any(train is seen for seen in self._data_checked):
            return
        sp = self.run.spelling
        ckpt.check_train_data(
            self.run.train_data,
            train,
            where=sp.where(self.run.output_dir),
            flag=flag or ("--data" if sp.cli else "train"),
            fix=fix
            or (
                f"drop --data to continue on the saved set, or train a new model into another "
                f"{sp.output}"
                if sp.cli
                else "pass the examples it was trained on, or train anew into another output_dir"
            ),
        )
        self._data_checked.append(train)


def _value(config: TrainConfig, name: str) -> Any:
    return getattr(config, _RESOLVED.get(name, name))


def changed_settings(saved: TrainConfig, config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(field, saved, new)`` for every must-match setting that differs (resolved values).

    A derived setting that neither side set (``var_lr=None``) is left out when it
    differs only because what it derives from does (then that one is listed).
    """
    out = []
    for name in MUST_MATCH:
        before, now = _value(saved, name), _value(config, name)
        if before == now:
            continue
        if name in _RESOLVED and getattr(saved, name) is None and getattr(config, name) is None:
            continue
        out.append((name, before, now))
    return out


def decide_resume(run: SavedRun, config: TrainConfig) -> ResumePlan:
    """Whether ``config`` continues ``run`` exactly; the plan, or one line that says why not.

    Refuses ``steps`` not above the steps done, then any :data:`MUST_MATCH`
    setting other than the saved one, then a damaged checkpoint file
    (:meth:`~scalabl_pyro.io.checkpoint.Checkpoint.check_files`, headers only).
    """
    sp, done = run.spelling, run.step
    if config.steps <= done:
        where = sp.output if sp.cli else run.output_dir
        steps = sp.setting("steps", config.steps)
        new_total = f"pass {sp.flags.get('steps', 'steps')} above {done}"
        raise ScalaBLError(
            f"{sp.resume}: the checkpoint in {where} has already trained {done} steps, so "
            f"{steps} would train none; {new_total}" + ("" if sp.cli else " (the new total)")
        )
    saved = run.train_config
    differ = changed_settings(saved, config) if saved is not None else []
    if differ:
        names = [n for n, _, _ in differ]
        now = ", ".join(sp.setting(n, v) for n, _, v in differ)
        before = ", ".join(sp.setting(n, v) for n, v, _ in differ)
        if sp.cli:
            typed = ", ".join(sp.flags.get(n, n) for n in names)
            fix = f"drop {typed} ({sp.resume} takes the saved values)"
        else:
            fix = f"pass {before}"
        raise ScalaBLError(
            f"{sp.resume}: {now} {'differs' if len(differ) == 1 else 'differ'} from the "
            f"checkpoint in {sp.where(run.output_dir)} (trained with {before}), and an exact "
            f"resume needs the saved value ({MUST_MATCH[names[0]]}); {fix}, or train anew into "
            f"another {sp.output}"
        )
    checkpoint = ckpt.Checkpoint(run.output_dir)
    checkpoint.check_files()
    return ResumePlan(run, config, checkpoint)


def plan_resume(
    output_dir: str | Path,
    config: TrainConfig,
    spelling: Spelling = API,
    *,
    overwrite: bool = False,
) -> ResumePlan:
    """:func:`read_saved_run` then :func:`decide_resume`: the one resume decision."""
    return decide_resume(read_saved_run(output_dir, spelling, overwrite=overwrite), config)


def plan_fit(
    model_config: Mapping[str, Any],
    train: Any,
    config: TrainConfig,
    output_dir: str | Path | None,
    resume: bool | ResumePlan,
    *,
    overwrite: bool = False,
) -> ResumePlan | None:
    """What ``ScalaBL.fit`` does about ``output_dir``: the resume plan, or the new-run check.

    ``resume`` is False (a new run: ``output_dir`` must be new or empty, or
    ``overwrite``), True (decide with :func:`plan_resume`) or the
    :class:`ResumePlan` the CLI decided already. The plan is checked against the
    model's settings (``model_config``) and the training examples.
    """
    if not resume:
        if output_dir is not None:
            flags = ("output_dir", "resume=True", "overwrite=True")
            ckpt.check_output_dir(output_dir, resume=False, overwrite=overwrite, flags=flags)
        elif overwrite:
            raise ScalaBLError("overwrite=True needs output_dir (the checkpoint to replace)")
        return None
    if output_dir is None:
        raise ScalaBLError("resume=True needs output_dir (the checkpoint to resume)")
    if not isinstance(resume, ResumePlan):
        resume = plan_resume(output_dir, config, overwrite=overwrite)
    if Path(resume.run.output_dir) != Path(output_dir):
        raise ScalaBLError(f"resume is a plan for {resume.run.output_dir}, not {output_dir}")
    plan = resume.for_config(config)
    plan.check_model(model_config)
    plan.check_data(train)
    return plan
