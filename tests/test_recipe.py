"""The recommended recipe: a fit given a validation split calibrates its BMA (per draw).

``fit(..., calibrate_on=val)`` (``scalabl train --calibrate-on validation``) fits one
temperature of the Bayesian model average on ``val``; ``predict`` and the checkpoint use
it, and the draws stay distinct, so the posterior's disagreement survives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scalabl_testutils import make_scalabl, randomize_lora, toy_dataset

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.evaluation.metrics import mutual_information
from scalabl_pyro.inference.temperature import bma_log_probs, tempered_draws
from scalabl_pyro.inference.train import TrainConfig


def _nll(sample_log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    lp = bma_log_probs(tempered_draws(sample_log_probs, temperature))
    return float(-lp[np.arange(len(labels)), labels].mean())


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    sbl = make_scalabl(init_scale=0.4)
    randomize_lora(sbl.subspace)  # so that draws of s disagree
    train, val = toy_dataset(8), toy_dataset(12, label=1)
    out = tmp_path_factory.mktemp("run") / "ckpt"
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, progress=False)
    sbl.fit(train, cfg, calibrate_on=val, output_dir=out)
    return sbl, val, out


def test_fit_with_a_validation_split_fits_the_bma_temperature(calibrated):
    sbl, val, _ = calibrated
    assert sbl.temperature is not None and sbl.temperature > 0
    assert sbl.temperature_from == f"{val.name}/{val.split} (12)"
    raw = sbl.predict(val, num_samples=10, progress=False, temperature=1.0)
    t = sbl.temperature
    # it minimises the NLL of the tempered average on the split it was fitted on
    best = _nll(raw.sample_log_probs, raw.labels, t)
    for other in (1.0, t * 1.5, t / 1.5):
        assert best <= _nll(raw.sample_log_probs, raw.labels, other) + 1e-9


def test_predict_uses_the_fitted_temperature_and_keeps_the_draws_distinct(calibrated):
    sbl, val, _ = calibrated
    raw = sbl.predict(val, num_samples=10, progress=False, temperature=1.0)
    default = sbl.predict(val, num_samples=10, progress=False)
    np.testing.assert_allclose(default.probs, raw.tempered(sbl.temperature).probs)
    np.testing.assert_allclose(
        default.probs, sbl.predict(val, progress=False, temperature=sbl.temperature).probs
    )
    if sbl.temperature != 1.0:
        assert not np.allclose(default.probs, raw.probs)
    assert mutual_information(np.exp(default.sample_log_probs)).mean() > 0


def test_the_checkpoint_keeps_the_temperature(calibrated):
    sbl, val, out = calibrated
    again = ScalaBL.from_parts(out, sbl.config, *_base(sbl))
    assert again.temperature == pytest.approx(sbl.temperature)
    assert again.temperature_from == sbl.temperature_from
    np.testing.assert_allclose(
        again.predict(val, num_samples=10, progress=False).probs,
        sbl.predict(val, num_samples=10, progress=False).probs,
        rtol=1e-6,
        atol=1e-7,
    )


def test_a_new_fit_without_a_validation_split_drops_the_temperature():
    sbl = make_scalabl(init_scale=0.4)
    sbl.temperature, sbl.temperature_from = 2.0, "old/validation (3)"
    sbl.fit(toy_dataset(8), TrainConfig(steps=1, batch_size=4, progress=False))
    assert sbl.temperature is None and sbl.temperature_from is None
    val = toy_dataset(6)
    np.testing.assert_allclose(
        sbl.predict(val, progress=False).probs,
        sbl.predict(val, progress=False, temperature=1.0).probs,
    )


def _base(sbl: ScalaBL):
    from scalabl_pyro.testing import tiny_model_and_tokenizer

    return tiny_model_and_tokenizer("llama")


# ------------------------------------------------------------------ command line


@pytest.fixture()
def tiny_files(tmp_path):
    import json

    from scalabl_pyro.testing import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    model_dir = tmp_path / "tiny-llama"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    def write(name: str, n: int) -> Path:
        rows = [
            {"question": f"Which is a mammal {i}?", "choices": ["a whale", "a rock"], "label": "A"}
            for i in range(n)
        ]
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(r) for r in rows))
        return path

    return model_dir, write("train.jsonl", 8), write("val.jsonl", 6)


def test_cli_train_calibrates_on_a_validation_file_and_evaluate_uses_it(tiny_files, tmp_path):
    import json

    from scalabl_pyro.cli import main

    model_dir, train, val = tiny_files
    ckpt = tmp_path / "ckpt"
    args = ["train", "--model", str(model_dir), "--data", str(train), "--output", str(ckpt)]
    args += ["--steps", "2", "--rank", "2", "--calibrate-on", str(val), "--no-progress"]
    assert main(args) == 0
    meta = json.loads((ckpt / "scalabl_config.json").read_text())
    assert meta["temperature"] > 0 and meta["temperature_from"] == "val/validation (6)"
    out = tmp_path / "m.json"
    base = ["evaluate", "--checkpoint", str(ckpt), "--data", str(val), "--samples", "3"]
    assert main([*base, "--output", str(out), "--no-progress"]) == 0
    m = json.loads(out.read_text())
    assert m["temperature"] == pytest.approx(meta["temperature"])
    assert main([*base, "--output", str(out), "--no-progress", "--no-calibration"]) == 0
    assert "temperature" not in json.loads(out.read_text())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--calibrate-limit", "5"], "--calibrate-limit subsets --calibrate-on"),
        (["--calibrate-on", "validation"], "names a split, but --data"),
    ],
)
def test_cli_calibration_mistakes_are_one_line(tiny_files, tmp_path, capsys, extra, message):
    from scalabl_pyro.cli import main

    model_dir, train, _ = tiny_files
    args = ["train", "--model", str(model_dir), "--data", str(train)]
    assert main([*args, "--output", str(tmp_path / "c"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_evaluate_fits_its_temperature_on_a_held_out_file(tiny_files, tmp_path):
    """--temperature-from takes a file as --calibrate-on does (one shared resolver)."""
    import json

    from scalabl_pyro.cli import main

    model_dir, train, val = tiny_files
    ckpt = tmp_path / "ckpt"
    args = ["train", "--model", str(model_dir), "--data", str(train), "--output", str(ckpt)]
    assert main([*args, "--steps", "2", "--rank", "2", "--no-progress"]) == 0
    out = tmp_path / "m.json"
    cmd = ["evaluate", "--checkpoint", str(ckpt), "--data", str(train), "--samples", "3"]
    assert main([*cmd, "--temperature-from", str(val), "--output", str(out), "--no-progress"]) == 0
    m = json.loads(out.read_text())
    assert m["temperature"] > 0 and m["temperature_from"] == "val/validation"


def test_held_out_examples_resolves_splits_files_and_refuses_the_judged_split(tiny_files):
    import argparse

    from scalabl_pyro.cli.checks import held_out_examples
    from scalabl_pyro.errors import ScalaBLError

    _, train, val = tiny_files
    # a data set with splits that is not in the registry's short list (an MMLU subject)
    args = argparse.Namespace(data="mmlu_college_physics", split="test", source="embedded")
    got = held_out_examples("validation", args, flag="--x", taken="reported", limit=4)
    assert got.split == "validation" and len(got) == 4
    with pytest.raises(ScalaBLError, match=r"--x test is reported; .*\(e\.g\. --x validation\)"):
        held_out_examples("test", args, flag="--x", taken="reported", limit=None)
    # a file is read as validation data, subset to the limit
    local = argparse.Namespace(data=str(train), split="train", source="embedded")
    assert len(held_out_examples(str(val), local, flag="--x", taken="t", limit=2)) == 2
    with pytest.raises(ScalaBLError, match="names a split, but --data .* is one local file"):
        held_out_examples("validation", local, flag="--x", taken="t", limit=None)
