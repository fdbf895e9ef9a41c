"""Stop training cleanly on Ctrl-C (SIGINT) or SIGTERM: finish the step, save, say so.

:func:`stop_after_step` installs handlers (main thread only) that only record
the signal; :meth:`ScalaBL.fit` checks the record after every optimizer step
(:func:`stopping_steps` wraps the trainer's ``step``) and, when set, raises
:class:`TrainingInterrupted` between two steps, where the state is whole. fit
then saves a resumable checkpoint to ``output_dir`` and re-raises with the
step and the directory in the message; the CLI prints that one line and
exits 130 (SIGINT) or 143 (SIGTERM). A second signal while the step finishes
stops at once (``KeyboardInterrupt``), as Ctrl-C did before, with what was
last saved left intact.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by a signal after a whole step (a ``KeyboardInterrupt``).

    ``step`` is the last step trained, ``signum`` the signal, ``saved`` the
    checkpoint directory written at that step (``None``: nothing saved).
    ``exit_code`` is the shell's convention, 128 + the signal number.
    """

    def __init__(self, message: str, *, step: int, signum: int, saved: str | None = None) -> None:
        super().__init__(message)
        self.step, self.signum, self.saved = step, signum, saved

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _Request:
    signum: int | None = None


@contextlib.contextmanager
def stop_after_step() -> Iterator[_Request]:
    """Record SIGINT/SIGTERM instead of acting on them; yields the record (``.signum``).

    Off the main thread (where handlers cannot be installed) the record never
    fills and signals keep their usual effect. The previous handlers are put
    back on exit.
    """
    request = _Request()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signum is not None:  # the second signal: stop now, as before
            raise KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        for s in SIGNALS:
            signal.signal(s, handler)
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def stopping_steps(step: Callable[[], Any], request: _Request, last: int) -> Callable[[], Any]:
    """``step`` that raises :class:`TrainingInterrupted` after a whole step once a signal came.

    The step that was running when the signal arrived finishes (the trainer
    has counted and recorded it); a signal during step ``last``, the final
    one, lets the run end normally.
    """

    def wrapped() -> Any:
        record = step()
        done = getattr(record, "step", None)
        if request.signum is not None and done is not None and done < last:
            raise TrainingInterrupted(
                f"interrupted by {signal.Signals(request.signum).name} after step {done}",
                step=done,
                signum=request.signum,
            )
        return record

    return wrapped
