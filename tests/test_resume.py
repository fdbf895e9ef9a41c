"""One resume path (issue 19, item 4): ``inference/resume.py`` decides for ``fit`` and the CLI.

* every TrainConfig field is classified once (must match / safe to change / not training);
* each must-match setting, changed, is refused in one line naming it, the saved and the
  new value and the fix, through ``fit`` and through ``scalabl train --resume``;
* the safe changes keep the resume exact;
* extending a finished run trains its first extra step at the new schedule's rate;
* the CLI and ``fit`` take the same path: one decision, one output-dir check, one read of
  the trainer state, of the file headers and of the parameters.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from bad_inputs import GOOD_ROWS, jsonl
from scalabl_testutils import guide_state, lora_state, make_scalabl, toy_dataset

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.cli import main
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference import resume as resume_module
from scalabl_pyro.inference.resume import (
    MUST_MATCH,
    NOT_TRAINING,
    SAFE_TO_CHANGE,
    changed_settings,
)
from scalabl_pyro.inference.train import TrainConfig, Trainer
from scalabl_pyro.io import checkpoint as ckpt
from scalabl_pyro.io import checkpoint_read

SAVED = dict(steps=2, batch_size=4, lr=1e-2, progress=False)
"""The settings of the checkpoint the refusal tests resume (TrainConfig defaults otherwise)."""


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**SAVED, **kw})


# ------------------------------------------------------------ classification


def test_every_train_config_field_is_classified_exactly_once():
    groups = [set(MUST_MATCH), set(SAFE_TO_CHANGE), set(NOT_TRAINING)]
    assert set().union(*groups) == {f.name for f in fields(TrainConfig)}
    assert sum(len(g) for g in groups) == len(fields(TrainConfig))


def test_derived_defaults_are_compared_resolved():
    saved = _cfg()  # var_lr None: 10 x lr; adam_eps None: 1e-8; kl_schedule None: constant
    same = _cfg(var_lr=0.1, adam_eps=1e-8, kl_schedule="constant")
    assert changed_settings(saved, same) == []
    # var_lr=None on both sides follows lr: only lr is named
    assert changed_settings(saved, _cfg(lr=1e-3)) == [("lr", 1e-2, 1e-3)]
    assert changed_settings(saved, _cfg(var_lr=0.5)) == [("var_lr", 0.1, 0.5)]
    safe = _cfg(steps=9, gradient_checkpointing=True, progress=True, eval_every=1)
    assert changed_settings(saved, safe) == []


# ------------------------------------------------- refusals, through fit and the CLI

CHANGES = {  # must-match field -> (new value, how the saved value reads in the message)
    "batch_size": (2, 4),
    "grad_accum": (2, 1),
    "seed": (1, 0),
    "partial_last_batch": (True, False),
    "objective": ("reference", "elbo"),
    "kl_schedule": ("cyclic", "constant"),
    "kl_weight": (2.0, 1.0),
    "kl_warmup_steps": (3, 0),
    "num_particles": (2, 1),
    "lr": (1e-3, 1e-2),
    "var_lr": (0.5, 0.1),
    "weight_decay": (0.1, 0.0),
    "adam_eps": (1e-6, 1e-8),
    "warmup_ratio": (0.1, 0.06),
    "reference_kl_lr": (0.1, 0.2),
    "max_grad_norm": (1.0, None),
    "bf16": (True, None),
}


def test_the_refusal_table_covers_every_must_match_setting():
    assert set(CHANGES) == set(MUST_MATCH)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A checkpoint of a finished 2-step run (the refusal tests never change it)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    make_scalabl().fit(toy_dataset(8), _cfg(), output_dir=out)
    return out


@pytest.mark.parametrize("name", list(CHANGES))
def test_fit_refuses_a_changed_setting_naming_it(finished: Path, name: str, monkeypatch):
    new, saved = CHANGES[name]
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    sbl = make_scalabl()
    monkeypatch.setattr(ScalaBL, "load_parameters", lambda *a: pytest.fail("loaded"))
    with pytest.raises(ScalaBLError) as info:
        sbl.fit(toy_dataset(8), _cfg(steps=4, **{name: new}), output_dir=finished, resume=True)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"resume=True: {name}={new!r} differs from the checkpoint in ")
    assert f"(trained with {name}={saved!r})" in line
    assert line.endswith(f"; pass {name}={saved!r}, or train anew into another output_dir")
    assert MUST_MATCH[name] in line  # why
    assert sbl.history.steps == []
    assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()} == before


CLI_CHANGES = {  # flag -> (value typed, as the message shows it, the saved value shown)
    "--batch-size": ("2", "2", "4"),
    "--grad-accum": ("2", "2", "1"),
    "--seed": ("1", "1", "0"),
    "--particles": ("2", "2", "1"),
    "--objective": ("reference", "reference", "elbo"),
    "--kl-schedule": ("cyclic", "cyclic", "constant"),
    "--kl-weight": ("2", "2.0", "1.0"),
    "--lr": ("0.001", "0.001", "0.01"),
    "--var-lr": ("0.5", "0.5", "0.1"),
    "--max-grad-norm": ("1", "1.0", None),
}


@pytest.mark.parametrize("flag", list(CLI_CHANGES))
def test_cli_refuses_a_changed_setting_with_the_same_rule(finished, flag, tmp_path, capsys):
    """``scalabl train --resume`` reaches the same decision, in its own words, exit 2."""
    value, shown, saved = CLI_CHANGES[flag]
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    rc = main(["train", "--output", str(run), "--resume", "--steps", "4", flag, value])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert err.startswith(f"error: --resume: {flag} {shown} differs"), err
    was = f"no {flag}" if saved is None else f"{flag} {saved}"
    assert f"differs from the checkpoint in --output {run} (trained with {was})" in err
    assert err.endswith(f"drop {flag} (--resume takes the saved values), or train anew into "
                        "another --output")  # fmt: skip


@pytest.mark.parametrize(
    "change, line",
    [
        ({"prior_scale": 0.5}, "this model's prior_scale=0.5 differs from the checkpoint in "),
        ({"guide": "full_rank"}, "this model's guide='full_rank' differs"),
        ({"rank": 2}, "(built with rank=4); load it with ScalaBL.from_pretrained"),
        ({"alpha": 8.0, "prior_scale": 2.0}, "alpha=8.0, prior_scale=2.0 differ"),
    ],
)
def test_fit_refuses_a_model_built_otherwise(finished: Path, change: dict, line: str):
    """The CLI builds the model from the checkpoint; ``fit`` is handed one, so it checks it."""
    sbl = make_scalabl(**change)
    with pytest.raises(ScalaBLError, match="^resume=True: ") as info:
        sbl.fit(toy_dataset(8), _cfg(steps=4), output_dir=finished, resume=True)
    assert line in str(info.value)
    assert sbl.history.steps == []


def test_no_steps_left_is_refused_first(finished: Path):
    with pytest.raises(ScalaBLError, match=r"already trained 2 steps, so steps=2 would train none"):
        make_scalabl().fit(toy_dataset(8), _cfg(batch_size=2), output_dir=finished, resume=True)


def test_resume_and_overwrite_together_are_refused(finished: Path):
    with pytest.raises(ScalaBLError, match="replaces it; pass only one"):
        make_scalabl().fit(
            toy_dataset(8), _cfg(steps=4), output_dir=finished, resume=True, overwrite=True
        )


# ------------------------------------------------------------- what resumes exactly


def _interrupt_at(monkeypatch, step: int) -> None:
    real = Trainer.step

    def step_until(self):
        if self.step_count >= step:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "step", step_until)


def test_safe_changes_keep_the_resume_exact(tmp_path, monkeypatch):
    """Progress, validation and checkpoint cadence, gradient checkpointing: same updates."""
    data, config = toy_dataset(8), _cfg(steps=4, seed=2, checkpoint_every=2)
    straight = make_scalabl(init_scale=0.2)
    straight.fit(data, config)
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        make_scalabl(init_scale=0.2).fit(data, config, output_dir=tmp_path / "run")
    monkeypatch.undo()
    changed = _cfg(
        steps=4,
        seed=2,
        progress=True,
        eval_every=1,
        checkpoint_every=1,
        gradient_checkpointing=True,
    )
    resumed = make_scalabl(init_scale=0.2)
    resumed.fit(data, changed, output_dir=tmp_path / "run", resume=True, validation=data)
    assert [s.step for s in resumed.history.steps] == [1, 2, 3, 4]
    for a, b in ((lora_state(resumed), lora_state(straight)),
                 (guide_state(resumed), guide_state(straight))):  # fmt: skip
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", ["elbo", "reference"])
def test_extending_a_finished_run_uses_the_new_schedule_from_its_first_extra_step(
    tmp_path, objective
):
    """Train 3 steps, then resume to 6: steps 4-6 run at the rates an uninterrupted 6-step run
    uses at steps 4-6 (before, step 4 ran at the finished schedule's last rate, 0).

    The parameters cannot equal the 6-step run's: its first 3 steps decay over 6 steps,
    the finished run's over 3. What carries over exactly is checked by the interrupted
    resume tests (test_train_predict.py, test_program.py, test_interrupt_resume.py).
    """
    guide = "log_mean_field" if objective == "reference" else "mean_field"
    data = toy_dataset(8)
    cfg = dict(lr=1e-2, batch_size=4, progress=False, warmup_ratio=0.34, objective=objective)
    out = tmp_path / "run"
    first = make_scalabl(guide=guide)
    first.fit(data, TrainConfig(steps=3, **cfg), output_dir=out)
    after_three = lora_state(first)
    resumed = make_scalabl(guide=guide)
    resumed.fit(data, TrainConfig(steps=6, **cfg), output_dir=out, resume=True)
    straight = make_scalabl(guide=guide)
    straight.fit(data, TrainConfig(steps=6, **cfg))
    lrs = [s.lr for s in resumed.history.steps]
    assert lrs[:3] == [s.lr for s in first.history.steps]
    assert lrs[3:] == [s.lr for s in straight.history.steps][3:]
    assert lrs[3] > 0
    # the first extra step moved the parameters (at lr 0 AdamW leaves them as they were)
    moved = [k for k, v in lora_state(resumed).items() if not torch.equal(v, after_three[k])]
    assert moved


# ------------------------------------------------------------ one path, each step once


class Counts:
    """Count calls of library functions (wrapped, still run)."""

    def __init__(self, monkeypatch) -> None:
        self.n: dict[str, int] = {}
        self.mp = monkeypatch

    def wrap(self, owner, name: str, key: str | None = None) -> None:
        real = getattr(owner, name)
        key = key or name

        def counted(*a, **k):
            self.n[key] = self.n.get(key, 0) + 1
            return real(*a, **k)

        self.mp.setattr(owner, name, counted)


def _count_resume_steps(monkeypatch) -> Counts:
    c = Counts(monkeypatch)
    c.wrap(resume_module, "decide_resume")
    c.wrap(ckpt, "check_output_dir")
    # patched where they are called: ``resume.py`` through ``io.checkpoint``, the
    # Checkpoint class in ``io.checkpoint_read``
    c.wrap(ckpt, "load_trainer_state")
    c.wrap(checkpoint_read, "load_trainer_state")
    c.wrap(checkpoint_read, "tensor_shapes")  # the file checks read each header once
    c.wrap(ckpt.Checkpoint, "lora")  # the parameters
    c.wrap(ckpt.Checkpoint, "guide_state")
    c.wrap(ScalaBL, "load_parameters")
    return c


ONCE = {
    "decide_resume": 1,
    "check_output_dir": 1,
    "load_trainer_state": 1,
    "tensor_shapes": 4,  # lora, guide, adapter (check_files) + lora (check_compatible)
    "lora": 1,
    "guide_state": 1,
    "load_parameters": 1,
}


@pytest.fixture()
def cli_space(tmp_path) -> Path:
    """A tiny model on disk, a data file, and a finished 2-step ``scalabl train`` run."""
    from scalabl_pyro.testing import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    (tmp_path / "data.jsonl").write_text(jsonl(GOOD_ROWS * 2))
    args = ["train", "--model", str(tmp_path / "tiny"), "--data", str(tmp_path / "data.jsonl")]
    args += ["--output", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2"]
    assert main([*args, "--rank", "2", "--lr", "0.01", "--no-progress"]) == 0
    return tmp_path


def test_cli_resume_decides_once_and_loads_the_parameters_once(cli_space, monkeypatch):
    c = _count_resume_steps(monkeypatch)
    run = cli_space / "run"
    assert main(["train", "--output", str(run), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert c.n == ONCE
    assert [s["step"] for s in ckpt.Checkpoint(run).history()["steps"]] == [1, 2, 3]


def test_fit_resume_takes_the_same_path(tmp_path, monkeypatch):
    data = toy_dataset(8)
    make_scalabl().fit(data, _cfg(), output_dir=tmp_path / "run")
    c = _count_resume_steps(monkeypatch)
    sbl = make_scalabl()
    sbl.fit(data, _cfg(steps=3), output_dir=tmp_path / "run", resume=True)
    assert c.n == ONCE
    assert [s.step for s in sbl.history.steps] == [1, 2, 3]


def test_fit_takes_a_plan_and_decides_again_only_for_another_config(tmp_path, monkeypatch):
    data = toy_dataset(8)
    make_scalabl().fit(data, _cfg(), output_dir=tmp_path / "run")
    plan = resume_module.plan_resume(tmp_path / "run", _cfg(steps=3))
    c = _count_resume_steps(monkeypatch)
    with pytest.raises(ScalaBLError, match=re.escape("resume=True: batch_size=2 differs")):
        make_scalabl().fit(data, _cfg(steps=3, batch_size=2), output_dir=tmp_path / "run",
                           resume=plan)  # fmt: skip
    assert c.n["decide_resume"] == 1
    make_scalabl().fit(data, _cfg(steps=3), output_dir=tmp_path / "run", resume=plan)
    assert c.n["decide_resume"] == 1 and "check_output_dir" not in c.n
