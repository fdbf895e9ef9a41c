"""Issue 21, "nothing silently ignored or lost": the in-process cases.

The command-line cases (exit status 2, one line, files untouched) are in
``tests/test_cli_failures.py``; the list is in docs/reliability.md.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scalabl_testutils import make_scalabl, toy_dataset

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.plots import reliability_diagram
from scalabl_pyro.io.image_mark import is_marked_image

# ------------------------------------------------------------------ images


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg"])
def test_plots_are_marked_and_others_are_not(tmp_path, suffix):
    from matplotlib.figure import Figure

    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    ours = tmp_path / f"rel.{suffix}"
    reliability_diagram({"m": (probs, np.array([0, 1, 1]))}, ours)
    assert is_marked_image(ours)
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    theirs = tmp_path / f"theirs.{suffix}"
    fig.savefig(theirs, format=suffix)
    assert not is_marked_image(theirs)
    (tmp_path / "text.png").write_text("scalabl-pyro")
    assert not is_marked_image(tmp_path / "text.png")
    assert not is_marked_image(tmp_path / "missing.png")


# ------------------------------------------------------------ checkpoints


def test_target_mismatch_names_the_modules(tmp_path):
    """Same number of sites, other modules: the message names both, not "(4 vs 4)"."""
    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.testing import tiny_model_and_tokenizer

    sbl = make_scalabl(target_modules=("q_proj", "v_proj"))
    path = sbl.save_pretrained(tmp_path / "ckpt")
    other = make_scalabl(target_modules=("k_proj", "o_proj"))
    model, tok = tiny_model_and_tokenizer("llama")
    with pytest.raises(ScalaBLError) as err:
        ScalaBL.from_parts(path, other.config, model, tok)
    msg = str(err.value)
    assert "the checkpoint adapts q_proj, v_proj but this model is set up to adapt k_proj" in msg
    assert "target_modules=('q_proj', 'v_proj')" in msg and " vs " not in msg


# ------------------------------------------------------------- formats


def test_truncation_is_a_warning_once(caplog):
    """A long prompt is warned about at the first batch, not at every training step."""
    sbl = make_scalabl()
    data = toy_dataset(4)
    long = [type(e)(e.id, "word " * 400 + e.question, e.choices, e.label) for e in data]
    fmt = sbl.format_for(data)
    with caplog.at_level(logging.INFO, logger="scalabl_pyro.program.formats"):
        for _ in range(3):
            fmt.encode(long)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1 and "later truncations are logged at INFO" in warnings[0].message
    assert len(infos) == 2 and fmt.truncated_total == 12


# ------------------------------------------------ fit: interrupt and resume


def test_fit_on_sigint_saves_the_whole_step_and_resume_checks_the_data(tmp_path, monkeypatch):
    """SIGINT mid-step: fit finishes the step, saves, raises TrainingInterrupted (a
    KeyboardInterrupt); resume=True then refuses other examples, naming both sets."""
    import os
    import signal

    import torch

    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.inference.interrupt import TrainingInterrupted
    from scalabl_pyro.inference.train import TrainConfig
    from scalabl_pyro.testing import tiny_model_and_tokenizer

    data = toy_dataset(8)
    config = TrainConfig(steps=5, batch_size=2, progress=False)
    sbl = make_scalabl()
    real, calls = torch.optim.AdamW.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background
    with pytest.raises(TrainingInterrupted) as err:
        sbl.fit(data, config, output_dir=out)
    monkeypatch.undo()
    assert str(err.value) == (
        f"interrupted by SIGINT after step 2 of 5; saved a resumable checkpoint of step 2 to {out}"
    )
    assert err.value.exit_code == 130 and isinstance(err.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is before  # put back as it was
    assert [s.step for s in sbl.history.steps] == [1, 2]

    model, tok = tiny_model_and_tokenizer("llama")
    resumed = ScalaBL.from_parts(out, sbl.config, model, tok)
    assert resumed.train_data == data.identity()
    with pytest.raises(ScalaBLError) as err:
        resumed.fit(toy_dataset(12), config, output_dir=out, resume=True)
    msg = str(err.value)
    assert msg.startswith("train toy/train: 12 examples, sha256 ")
    assert f"is not the training set of the checkpoint in {out} (toy/train: 8 examples" in msg
    assert "pass the examples it was trained on" in msg
    resumed.fit(data, config, output_dir=out, resume=True)
    assert [s.step for s in resumed.history.steps] == [1, 2, 3, 4, 5]
