"""lm-evaluation-harness parity (issue 21): an exported ScalaBL adapter scored by lm-eval
gives this library's per-question log-likelihoods and decisions.

Runs ``benchmarks/lm_eval_parity.py``'s comparison on a tiny random Llama saved
locally and the ARC-Easy fixture questions; the same script, run on the
embedded SmolLM2 over ARC-Easy validation, writes
``benchmarks/results/lm_eval_parity.json``. Needs the ``harness`` extra.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from scalabl_testutils import load_benchmark_script, randomize_lora

from scalabl_pyro import MCDataset, MCExample, ScalaBL, ScalaBLConfig
from scalabl_pyro.testing import tiny_model_and_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "hub" / "arc_easy" / "validation.jsonl"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("lm_eval") is None,
        reason="lm-eval is not installed (pip install 'scalabl-pyro[harness]')",
    ),
]


def _arc_easy_fixture() -> MCDataset:
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    examples = [
        MCExample(
            r["id"],
            r["question"],
            tuple(r["choices"]["text"]),
            r["choices"]["label"].index(r["answerKey"]),
        )
        for r in rows
    ]
    return MCDataset("arc_easy", "validation", examples)


def test_lm_eval_scores_an_exported_model_as_we_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    parity = load_benchmark_script("lm_eval_parity")
    model, tok = tiny_model_and_tokenizer("llama")
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    data = _arc_easy_fixture()
    cfg = ScalaBLConfig(
        base_model=str(base),
        device="cpu",
        dtype="float32",
        normalization="sum",
        num_classes=data.num_classes,
        rank=4,
    )
    sbl = ScalaBL.from_base(cfg)
    randomize_lora(sbl.subspace)  # an adapter that changes the model
    out = parity.run(sbl, data, tmp_path / "work", batch_size=4)

    n = len(data)
    assert out["questions"] == n
    assert out["token_mismatches"] == 0
    assert out["max_abs_diff_choice_loglik"] < 1e-3
    assert out["max_abs_diff_question_logprob"] < 1e-3
    assert out["per_question_agreement"]["acc"] == f"{n}/{n}"
    assert out["per_question_agreement_with_lm_eval_divisors"] == {
        "acc_norm": f"{n}/{n}",
        "acc_bytes": f"{n}/{n}",
    }
    assert out["lm_eval"]["acc"] == out["ours"]["sum"] == out["ours"]["evaluate_mode_mean_acc"]
