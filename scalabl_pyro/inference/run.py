"""One training run of a built model: checkpoints, signals, divergence and resume.

:func:`run_training` drives a :class:`~scalabl_pyro.inference.train.Trainer` to
``config.steps``: periodic validation and checkpoints, a resumable checkpoint
on SIGINT/SIGTERM (:mod:`.interrupt`), and a :class:`NonFiniteError` that names
the last good checkpoint. Saving is a callable the caller passes (the facade's
``save_pretrained``), so this module knows nothing above inference.

RESUME: :func:`check_fit_output`, :func:`open_resume`, :func:`_check_resume_config`
and :class:`_LastGood` were moved here verbatim from ``api.py`` (the method
registry, issue 19 item 2). Their logic is owned by the one-resume-path work
(issue 19 item 4): change it there, not as part of the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.interrupt import TrainingInterrupted, stop_after_step, stopping_steps
from scalabl_pyro.inference.train import NonFiniteError, TrainConfig, Trainer, TrainHistory
from scalabl_pyro.io import checkpoint as ckpt


def check_fit_output(
    output_dir: str | Path | None, *, resume: bool, overwrite: bool
) -> None:
    """What ``fit`` checks about ``output_dir`` before anything runs (moved verbatim)."""
    if resume:
        if output_dir is None:
            raise ScalaBLError("resume=True needs output_dir (the checkpoint to resume)")
        if not (Path(output_dir) / ckpt.CONFIG_FILE).is_file():
            raise ScalaBLError(
                f"{output_dir} holds no checkpoint to resume; train without resume first"
            )
    if output_dir is not None:
        ckpt.check_output_dir(
            output_dir,
            resume=resume,
            overwrite=overwrite,
            flags=("output_dir", "resume=True", "overwrite=True"),
        )
    elif overwrite:
        raise ScalaBLError("overwrite=True needs output_dir (the checkpoint to replace)")


def open_resume(
    output_dir: str | Path | None, train: MCDataset, config: TrainConfig
) -> tuple[ckpt.Checkpoint, dict]:
    """The checkpoint to resume and its trainer state, after the resume checks (moved verbatim)."""
    checkpoint = ckpt.Checkpoint(output_dir)
    checkpoint.check_files()
    trainer_state = checkpoint.trainer_state()
    if trainer_state is None:
        raise ScalaBLError(
            f"{output_dir} has no {ckpt.TRAINER_FILE}; it cannot be resumed (train anew)"
        )
    _check_resume_config(output_dir, checkpoint.meta, trainer_state, config)
    ckpt.check_train_data(
        checkpoint.meta.get(ckpt.TRAIN_DATA_KEY),
        train,
        where=str(output_dir),
        flag="train",
        fix="pass the examples it was trained on, or train anew into another output_dir",
    )
    return checkpoint, trainer_state


def run_training(
    trainer: Trainer,
    *,
    output_dir: str | Path | None,
    resumed: bool,
    save: Callable[[], None],
    evaluate: Callable[[int], dict] | None = None,
    save_at_end: bool = True,
) -> TrainHistory:
    """Train to ``trainer.config.steps``; ``save()`` writes the checkpoint to ``output_dir``."""
    config = trainer.config
    last_good = _LastGood(output_dir, trainer.step_count if resumed else None)

    def checkpoint_fn(step: int) -> None:
        if output_dir is not None:
            save_from_main(trainer, save)
            last_good.step = step

    try:
        with stop_after_step() as request:
            if trainer.distributed is None:  # several processes: signals act as before
                trainer.step = stopping_steps(trainer.step, request, config.steps)
            try:
                trainer.run(evaluate, checkpoint_fn)
            except TrainingInterrupted as e:
                raise _save_interrupted(e, trainer, output_dir, last_good, save) from None
    except NonFiniteError as e:
        raise NonFiniteError(f"{e}; {last_good.describe()}", e.step, e.loss) from e
    if output_dir is not None and save_at_end and last_good.step != trainer.step_count:
        save_from_main(trainer, save)  # unless the last periodic save was this step
    return trainer.history


def _save_interrupted(
    e: TrainingInterrupted,
    trainer: Trainer,
    output_dir: str | Path | None,
    last_good: _LastGood,
    save: Callable[[], None],
) -> TrainingInterrupted:
    """After a signal: save the whole step just trained (unless saved already), say so."""
    saved = None
    if output_dir is not None:
        if last_good.step != trainer.step_count:
            save_from_main(trainer, save)
        saved = str(output_dir)
    message = _interrupted_message(e, trainer.config.steps, saved)
    return TrainingInterrupted(message, step=e.step, signum=e.signum, saved=saved)


def save_from_main(trainer: Trainer | None, save: Callable[[], None]) -> None:
    """Save (rank 0 only under several processes; the others wait for it)."""
    if trainer is None or trainer.distributed is None:
        save()
        return
    if trainer.distributed.is_main:
        save()
    trainer.distributed.barrier()


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



_OPTIMIZER_SETTINGS = {  # what the optimizer state restores on resume: TrainConfig attribute
    "lr": "lr",
    "var_lr": "resolved_var_lr",
    "weight_decay": "weight_decay",
    "adam_eps": "resolved_adam_eps",
}


def _check_resume_config(  # RESUME: moved verbatim from api.py
    output_dir: str | Path, meta: dict, trainer_state: dict, config: TrainConfig
) -> None:
    """Refuse a resume that would train nothing or silently keep other learning rates."""
    done = int(trainer_state.get("step", 0))
    if config.steps <= done:
        raise ScalaBLError(
            f"resume=True: the checkpoint in {output_dir} has already trained {done} steps, so "
            f"steps={config.steps} would train none; pass steps above {done} (the new total)"
        )
    saved = meta.get("train_config")
    if not isinstance(saved, dict):
        return
    try:
        before = TrainConfig(
            **{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
        )
    except (TypeError, ValueError):
        return  # an unreadable saved config: the optimizer state is what counts
    differ = [
        f"{name} {getattr(config, attr):g} (saved {getattr(before, attr):g})"
        for name, attr in _OPTIMIZER_SETTINGS.items()
        if getattr(config, attr) != getattr(before, attr)
    ]
    if differ:
        raise ScalaBLError(
            f"resume=True restores the optimizer state of {output_dir}, which keeps its own "
            f"learning rates, weight decay and eps, so {', '.join(differ)} would be ignored; "
            "pass the saved values, or train anew into another output_dir"
        )
