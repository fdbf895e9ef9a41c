"""One program from training to prediction: Predictive, scoped draws, exact export, resume,
no global side effects, per-example gradient clipping."""

from __future__ import annotations

import math
import random

import numpy as np
import pyro
import pytest
import torch
from peft import PeftModel
from pyro.infer import Predictive
from scalabl_testutils import guide_state, lora_state, make_scalabl, randomize_lora, toy_dataset

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.predict import draw_latents, predictive_scores
from scalabl_pyro.inference.train import NonFiniteError, TrainConfig, Trainer
from scalabl_pyro.program.model import pyro_settings
from scalabl_pyro.testing import tiny_model_and_tokenizer

LETTER_HEAD = dict(task_format="letter", target_modules=("q_proj", "v_proj", "lm_head"))
FORMATS = [pytest.param({}, id="choice"), pytest.param(LETTER_HEAD, id="letter-head")]


def _cfg(**kw) -> TrainConfig:
    kw.setdefault("steps", 3)
    kw.setdefault("lr", 1e-2)
    return TrainConfig(progress=False, **kw)


def _trained(guide="mean_field", **config) -> tuple[ScalaBL, object]:
    sbl = make_scalabl(guide=guide, init_scale=0.2, **config)
    randomize_lora(sbl.subspace)
    data = toy_dataset(8)
    sbl.fit(data, _cfg())
    return sbl, data


# --------------------------------------------------------------- Predictive


@pytest.mark.parametrize("config", FORMATS)
def test_pyro_predictive_runs_the_same_program(config):
    sbl, data = _trained(**config)
    fmt = sbl.format_for(data)
    batch = fmt.encode(list(data)[:4], indices=[0, 1, 2, 3])
    draws = draw_latents(sbl.model, sbl.guide, 4, seed=3)
    with pyro_settings(), torch.no_grad():
        # Pyro's own Predictive on the training program, conditioned on the same draws
        pyro_scores = Predictive(
            sbl.model, posterior_samples=draws, return_sites=["class_scores"], parallel=True
        )(batch)["class_scores"]
        ours = predictive_scores(sbl.model, batch, draws)
        torch.testing.assert_close(pyro_scores.reshape(ours.shape), ours, rtol=1e-5, atol=1e-5)
        # ... and with the guide: S draws of the scores and of the labels
        out = Predictive(
            sbl.model,
            guide=sbl.guide,
            num_samples=5,
            parallel=True,
            return_sites=["class_scores", "obs"],
        )(batch)
    assert out["class_scores"].reshape(5, 4, -1).shape[0] == 5
    assert out["obs"].reshape(5, 4).shape == (5, 4)
    # predict() is the probability average of exactly those per-draw scores
    pred = sbl.predict(data, num_samples=4, seed=3, progress=False)
    lp = torch.log_softmax(ours.double(), -1).numpy()
    np.testing.assert_allclose(pred.sample_log_probs[:, :4], lp, atol=1e-5)


def test_nothing_stays_on_the_layers_after_predict_and_fit():
    sbl, data = _trained()
    fmt = sbl.format_for(data)
    batch = fmt.encode(list(data)[:3])
    sbl.predict(data, num_samples=6, progress=False)
    assert not sbl.subspace.in_scope
    with torch.no_grad():
        plain = sbl.subspace.peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits  # rows = 3*C, not 6 x that: no leftover folded draws
        with sbl.subspace.use(sbl.posterior_mean()):
            mean = sbl.subspace.peft_model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits
    torch.testing.assert_close(plain, mean, rtol=0, atol=0)


# ------------------------------------------------------------- exact export


def _mean_logits(sbl: ScalaBL, batch) -> torch.Tensor:
    with torch.no_grad():
        return sbl.subspace.peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits


@pytest.mark.parametrize("family", ["mean_field", "log_mean_field", "full_rank"])
@pytest.mark.parametrize("config", FORMATS)
def test_peft_alone_and_the_merged_model_are_the_posterior_mean_model(tmp_path, family, config):
    sbl, data = _trained(guide=family, **config)
    batch = sbl.format_for(data).encode(list(data))
    mean = sbl.posterior_mean()
    assert not all(torch.allclose(v, torch.ones_like(v)) for v in mean.values())
    want = _mean_logits(sbl, batch)  # the peft model outside a scope: the posterior mean
    with torch.no_grad():
        want_scores = sbl.model.scores(batch, mean)  # includes the answer-token head
    path = sbl.save_pretrained(tmp_path / "ckpt")

    def check(logits: torch.Tensor) -> None:
        if batch.kind == "choice":
            torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
            return
        cls = logits[:, -1, batch.class_token_ids].masked_fill(~batch.class_mask, -torch.inf)
        torch.testing.assert_close(cls, want_scores, rtol=1e-4, atol=1e-4)
        others = torch.ones(logits.shape[-1], dtype=torch.bool)
        others[batch.class_token_ids] = False  # the head is adapted on the answer rows only
        torch.testing.assert_close(logits[..., others], want[..., others], rtol=1e-4, atol=1e-4)

    base, _ = tiny_model_and_tokenizer("llama")
    peft_only = PeftModel.from_pretrained(base, path / "adapter")
    with torch.no_grad():
        check(peft_only(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)

    merged = sbl.merge_and_unload()
    assert not isinstance(merged, PeftModel)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        check(merged(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)
    # the input embeddings stay the base model's (a tied head is untied before merging)
    fresh, _ = tiny_model_and_tokenizer("llama")
    torch.testing.assert_close(
        merged.get_input_embeddings().weight, fresh.get_input_embeddings().weight
    )
    with pytest.raises(ScalaBLError, match="merge_and_unload"):
        sbl.predict(data, progress=False)


def test_export_adapter_writes_only_the_peft_adapter(tmp_path):
    sbl, data = _trained()
    out = sbl.export_adapter(tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


# ------------------------------------------------------------------ resume


def test_resume_on_a_fresh_model_restores_the_parameters(tmp_path, monkeypatch):
    data = toy_dataset(8)
    config = _cfg(steps=4, checkpoint_every=2, seed=2)
    straight = make_scalabl(init_scale=0.2)
    straight.fit(data, config)
    real_step = Trainer.step

    def stop_after_two(self):
        if self.step_count >= 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "step", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        make_scalabl(init_scale=0.2).fit(data, config, output_dir=tmp_path / "run")
    monkeypatch.undo()
    fresh = make_scalabl(init_scale=0.2)  # untrained: resume must load the parameters
    fresh.fit(data, config, output_dir=tmp_path / "run", resume=True)
    assert [s.step for s in fresh.history.steps] == [1, 2, 3, 4]
    for a, b in (
        (lora_state(fresh), lora_state(straight)),
        (guide_state(fresh), guide_state(straight)),
    ):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_resume_refuses_without_a_checkpoint_or_trainer_state(tmp_path):
    data = toy_dataset(8)
    sbl = make_scalabl()
    with pytest.raises(ScalaBLError, match="^resume=True: output_dir .*nothing does not exist"):
        sbl.fit(data, _cfg(steps=1), output_dir=tmp_path / "nothing", resume=True)
    sbl.save_pretrained(tmp_path / "untrained")  # a checkpoint without optimizer state
    with pytest.raises(ScalaBLError, match="cannot be resumed"):
        sbl.fit(data, _cfg(steps=1), output_dir=tmp_path / "untrained", resume=True)


def test_fit_checks_output_dir_like_the_cli(tmp_path):
    """fit(output_dir=...) never replaces what it did not write, and refuses before training."""
    data = toy_dataset(8)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ScalaBLError, match="^output_dir .*mine is not empty and is not a scalabl"):
        make_scalabl().fit(data, _cfg(steps=1), output_dir=mine)
    sbl = make_scalabl()
    sbl.fit(data, _cfg(steps=2), output_dir=tmp_path / "run")
    saved = (tmp_path / "run" / "lora.safetensors").read_bytes()
    again = make_scalabl()
    with pytest.raises(ScalaBLError, match="already holds a checkpoint; pass resume=True"):
        again.fit(data, _cfg(steps=2), output_dir=tmp_path / "run")
    assert again.history.steps == []  # refused before any step
    again.fit(data, _cfg(steps=2, seed=1), output_dir=tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / "lora.safetensors").read_bytes() != saved
    assert (mine / "notes.txt").read_text() == "keep me"


def test_resume_refuses_no_new_steps_and_changed_learning_rates(tmp_path):
    data = toy_dataset(8)
    make_scalabl().fit(data, _cfg(steps=3, lr=1e-2), output_dir=tmp_path / "run")
    fresh = make_scalabl()
    with pytest.raises(ScalaBLError, match=r"already trained 3 steps, so steps=3 would train none"):
        fresh.fit(data, _cfg(steps=3, lr=1e-2), output_dir=tmp_path / "run", resume=True)
    # var_lr=None on both sides follows lr: only lr is named
    with pytest.raises(ScalaBLError, match=r"^resume=True: lr=0\.1 differs from the checkpoint"):
        fresh.fit(data, _cfg(steps=5, lr=1e-1), output_dir=tmp_path / "run", resume=True)
    with pytest.raises(ScalaBLError, match=r"weight_decay=0\.5 differs .* pass weight_decay=0\.0"):
        fresh.fit(data, _cfg(steps=5, weight_decay=0.5), output_dir=tmp_path / "run", resume=True)
    fresh.fit(data, _cfg(steps=5, lr=1e-2), output_dir=tmp_path / "run", resume=True)
    assert [s.step for s in fresh.history.steps] == [1, 2, 3, 4, 5]


def test_divergence_names_step_cause_and_the_last_good_checkpoint(tmp_path):
    """lr 1e19: step 1 is finite, its update overflows the logits, Pyro refuses them."""
    data = toy_dataset(8)
    sbl = make_scalabl()
    config = _cfg(steps=4, lr=1e19, checkpoint_every=1, batch_size=2)
    with pytest.raises(NonFiniteError) as info:
        sbl.fit(data, config, output_dir=tmp_path / "run")
    msg = str(info.value)
    assert msg.startswith("training diverged at step 2: Pyro found invalid values in the logits")
    assert "likely cause: updates too large for this model (lr 1e+19" in msg
    assert msg.endswith(f"the last good checkpoint, {tmp_path / 'run'} (step 1), is intact")
    assert info.value.step == 2 and math.isfinite(info.value.loss)
    without_validation = pyro.validation_enabled(False)  # then the NaN loss is caught instead
    raises = pytest.raises(NonFiniteError, match="^training diverged at step 2: the loss became")
    with without_validation, raises:
        make_scalabl().fit(data, config)


def test_a_non_finite_parameter_is_never_saved(tmp_path):
    sbl = make_scalabl()
    data = toy_dataset(8)
    trainer = Trainer(
        sbl.model, sbl.guide, "mean_field", sbl.format_for(data), data, _cfg(), sbl.device
    )
    trainer.step()
    real = trainer.optimizer.step

    def spoil(*a, **k):  # an update that leaves a NaN behind
        out = real(*a, **k)
        with torch.no_grad():
            trainer.lora_params[0].fill_(float("nan"))
        return out

    trainer.optimizer.step = spoil
    with pytest.raises(NonFiniteError, match="step 2: a parameter became non-finite"):
        trainer.step()
    assert trainer.step_count == 1 and len(trainer.history.steps) == 1


def test_checkpoint_for_another_base_model_is_refused_before_loading(tmp_path):
    sbl, data = _trained()
    path = sbl.save_pretrained(tmp_path / "ckpt")
    from scalabl_pyro.testing import tiny_model

    _, tok = tiny_model_and_tokenizer("llama")
    wider = tiny_model("llama", vocab_size=len(tok), hidden=96)
    with pytest.raises(ScalaBLError, match="base model it was trained on"):
        ScalaBL.from_parts(path, sbl.config, wider, tok)


# --------------------------------------------------------- global side effects


def _global_state():
    return (
        torch.get_rng_state().clone(),
        random.getstate(),
        np.random.get_state()[1].copy(),
        pyro.settings.get("module_local_params"),
    )


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2]) and a[3] == b[3]


def test_library_calls_leave_global_state_alone(tmp_path):
    model, tok = tiny_model_and_tokenizer("llama")
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    data = toy_dataset(8)
    with pyro.settings.context(module_local_params=False):
        torch.manual_seed(1234)
        random.seed(5)
        np.random.seed(6)
        before = _global_state()
        sbl = ScalaBL.from_base(ScalaBLConfig(base_model=str(tmp_path / "base"), rank=4))
        assert _same(before, _global_state()), "from_base"
        sbl.fit(data, _cfg(steps=2), validation=data, eval_samples=2)
        assert _same(before, _global_state()), "fit"
        sbl.predict(data, num_samples=3, progress=False)
        assert _same(before, _global_state()), "predict"
        sbl.evaluate(data, num_samples=2, progress=False)
        assert _same(before, _global_state()), "evaluate"
        assert len(pyro.get_param_store()) == 0  # nothing leaked into the global store


# ------------------------------------------------------------ gradient clipping


def test_grad_norm_is_recorded_in_per_example_units_and_clipping_is_rare():
    sbl = make_scalabl(init_scale=0.2)
    randomize_lora(sbl.subspace)
    small, large = toy_dataset(8), toy_dataset(64)
    norms = {}
    for data in (small, large):
        fresh = make_scalabl(init_scale=0.2)
        randomize_lora(fresh.subspace)
        hist = fresh.fit(data, _cfg(steps=3, lr=1e-3))
        norms[len(data)] = [s.grad_norm for s in hist.steps]
        assert not any(s.clipped for s in hist.steps)  # off by default
    # per-example units: the same order of magnitude whatever the data-set size
    assert 0.1 < np.mean(norms[64]) / np.mean(norms[8]) < 10
    # a threshold in those units clips only the steps above it
    thr = float(np.median(norms[8]))
    fresh = make_scalabl(init_scale=0.2)
    randomize_lora(fresh.subspace)
    hist = fresh.fit(small, _cfg(steps=3, lr=1e-3, max_grad_norm=thr))
    flags = [s.clipped for s in hist.steps]
    assert flags == [s.grad_norm > thr for s in hist.steps]
    assert not all(flags)
    with pytest.raises(ScalaBLError, match="max_grad_norm"):
        TrainConfig(max_grad_norm=0.0)
