"""One training run of a built model: checkpoints, signals and divergence.

:func:`run_training` drives a :class:`~scalabl_pyro.inference.train.Trainer` to
``config.steps``: periodic validation and checkpoints, a resumable checkpoint
on SIGINT/SIGTERM (:mod:`.interrupt`), and a :class:`NonFiniteError` that names
the last good checkpoint. Saving is a callable the caller passes (the facade's
``save_pretrained``), so this module knows nothing above inference.

Whether and how a run resumes is decided once, in :mod:`.resume`; this module
only continues the run it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scalabl_pyro.inference.interrupt import TrainingInterrupted, stop_after_step, stopping_steps
from scalabl_pyro.inference.train import NonFiniteError, Trainer, TrainHistory
from scalabl_pyro.io import checkpoint as ckpt


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
