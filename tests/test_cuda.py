"""Checks that need a CUDA GPU (marked ``cuda``; skipped without one, run by gpu_check.py)."""

from __future__ import annotations

import pytest
import torch
from scalabl_testutils import guide_state, make_scalabl, toy_dataset

from scalabl_pyro.inference.train import TrainConfig
from scalabl_pyro.utils.rng import seeded

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_bf16_training_and_bma_on_cuda():
    sbl = make_scalabl(guide="mean_field")
    sbl.subspace.peft_model.to("cuda")
    sbl.guide.to("cuda")
    sbl.device = torch.device("cuda")
    before = guide_state(sbl)
    history = sbl.fit(toy_dataset(8), TrainConfig(steps=3, lr=1e-2, bf16=True, progress=False))
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in history.steps)
    after = guide_state(sbl)
    assert all(v.is_cuda for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    pred = sbl.predict(toy_dataset(8), num_samples=4, progress=False)
    assert abs(pred.probs.sum(axis=1) - 1).max() < 1e-6


def test_seeded_restores_the_cuda_generator():
    torch.cuda.manual_seed(123)
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed(123)
    with seeded(7, ["cuda"]):
        torch.rand(5, device="cuda")
    torch.testing.assert_close(torch.rand(3, device="cuda"), expected)


def test_lean_loading_places_weights_on_cuda(tmp_path):
    from scalabl_pyro.io.loading import load_base_model
    from scalabl_pyro.testing import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cuda, _ = load_base_model(str(tmp_path), dtype="bfloat16", device="cuda")
    assert all(p.is_cuda and p.dtype == torch.bfloat16 for p in cuda.parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(cuda.state_dict()[k].cpu(), v.to(torch.bfloat16), msg=k)


def test_four_bit_base_trains_on_cuda(tmp_path):
    pytest.importorskip("bitsandbytes", reason="the [quantization] extra is not installed")
    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.testing import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    sbl = ScalaBL.from_base(
        ScalaBLConfig(base_model=str(tmp_path), quantization="4bit", rank=4, device="cuda")
    )
    history = sbl.fit(toy_dataset(8), TrainConfig(steps=2, lr=1e-2, progress=False))
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in history.steps)
