"""Quantised frozen base (bitsandbytes 4-bit / 8-bit, QLoRA style) behind one config field."""

from __future__ import annotations

import sys

import pytest
import torch
from scalabl_testutils import toy_dataset

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.train import TrainConfig
from scalabl_pyro.io.loading import quantization_config
from scalabl_pyro.testing import tiny_model_and_tokenizer


def _quantization_or_skip(kind: str, device: str = "cpu") -> None:
    """Skip, with the reason printed, where bitsandbytes cannot quantise on ``device``."""
    try:
        quantization_config(kind, torch.bfloat16, torch.device(device))
    except ScalaBLError as e:
        pytest.skip(f"{kind} base not testable here: {e}")


def test_unknown_quantization_is_refused():
    with pytest.raises(ScalaBLError, match="unknown quantization '3bit'"):
        ScalaBLConfig(quantization="3bit")


def test_missing_bitsandbytes_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(ScalaBLError, match=r"needs bitsandbytes.*scalabl-pyro\[quantization\]"):
        quantization_config("4bit", torch.bfloat16, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_quantized_base_trains_predicts_and_reloads(kind, tmp_path):
    _quantization_or_skip(kind)
    import bitsandbytes as bnb

    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    config = ScalaBLConfig(
        base_model=str(tmp_path / "base"), quantization=kind, rank=4, device="cpu", dtype="bf16"
    )
    sbl = ScalaBL.from_base(config)
    linear = bnb.nn.Linear4bit if kind == "4bit" else bnb.nn.Linear8bitLt
    q_proj = sbl.subspace.peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, linear), "the frozen base is quantised"
    assert all(not p.requires_grad for p in q_proj.base_layer.parameters())
    data = toy_dataset(8)
    history = sbl.fit(data, TrainConfig(steps=2, batch_size=4, lr=1e-2, progress=False))
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in history.steps)
    before = sbl.predict(data, num_samples=2, progress=False)
    assert torch.isfinite(torch.as_tensor(before.probs)).all()
    sbl.save_pretrained(tmp_path / "ckpt")
    again = ScalaBL.from_pretrained(tmp_path / "ckpt", device="cpu", dtype="bf16")
    assert again.config.quantization == kind
    after = again.predict(data, num_samples=2, progress=False)
    torch.testing.assert_close(
        torch.as_tensor(after.probs), torch.as_tensor(before.probs), atol=1e-6, rtol=0
    )
