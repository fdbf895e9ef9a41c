"""Interoperability: an exported adapter names its base and loads with peft's AutoPeftModel,
and the library prints nothing on import or while loading (issue 21)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from scalabl_testutils import randomize_lora, toy_dataset

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.io import checkpoint as ckpt
from scalabl_pyro.io import loading
from scalabl_pyro.testing import tiny_model, tiny_model_and_tokenizer

REPO = Path(__file__).resolve().parents[1]
LETTER_HEAD = dict(task_format="letter", target_modules=("q_proj", "v_proj", "lm_head"))
FORMATS = [pytest.param({}, id="choice"), pytest.param(LETTER_HEAD, id="letter-head")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and its tokenizer, written with save_pretrained (a local base)."""
    path = tmp_path_factory.mktemp("tiny-base")
    model, tok = tiny_model_and_tokenizer("llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _scalabl(base: Path, **config) -> ScalaBL:
    config.setdefault("rank", 4)
    cfg = ScalaBLConfig(base_model=str(base), device="cpu", dtype="float32", **config)
    sbl = ScalaBL.from_base(cfg)
    randomize_lora(sbl.subspace)  # B != 0, so the adapter changes the model
    return sbl


def _choice_scores(logits: torch.Tensor, batch) -> torch.Tensor:
    """(B, C) answer log-likelihoods (the batch's normalization) from one row per choice."""
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    tok = lp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    per_row = (tok * batch.target_mask[:, 1:]).sum(-1)
    if batch.normalization == "mean":
        per_row = per_row / batch.target_mask.sum(-1)
    elif batch.normalization == "byte":
        per_row = per_row / batch.answer_bytes
    scores = torch.full(batch.class_mask.shape, -torch.inf, dtype=torch.double)
    scores[batch.row_example, batch.row_choice] = per_row
    return scores


# -------------------------------------------------------- the adapter's base


def test_adapter_names_a_local_base_by_its_absolute_path(tiny_dir: Path, tmp_path: Path) -> None:
    sbl = _scalabl(tiny_dir)
    out = sbl.export_adapter(tmp_path / "adapter")
    config = json.loads((out / ckpt.ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str(tiny_dir.resolve())
    assert config["revision"] is None
    # save_pretrained's adapter folder names it the same way
    saved = sbl.save_pretrained(tmp_path / "ckpt")
    inner = json.loads((saved / ckpt.ADAPTER_DIR / ckpt.ADAPTER_CONFIG).read_text())
    assert inner["base_model_name_or_path"] == str(tiny_dir.resolve())


def test_relative_local_path_is_written_absolute(tiny_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(tiny_dir.parent)
    model, _ = loading.load_base_model(tiny_dir.name, device="cpu", dtype="float32")
    assert ckpt.adapter_base(model) == (str(tiny_dir.resolve()), None)


def test_hub_base_is_named_by_id_and_commit() -> None:
    model = tiny_model()
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.name_or_path = model.config.name_or_path
    model.config._commit_hash = "0123456789abcdef0123456789abcdef01234567"
    assert ckpt.adapter_base(model) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "0123456789abcdef0123456789abcdef01234567",
    )


def test_model_without_origin_writes_null_never_the_string_none(tmp_path: Path) -> None:
    model, tok = tiny_model_and_tokenizer("llama")  # built from a config in memory
    for name in ("", "None"):
        model.config.name_or_path = name
        model.name_or_path = name
        assert ckpt.adapter_base(model) == (None, None)
    sbl = ScalaBL(ScalaBLConfig(base_model="tiny", rank=4), model, tok)
    config = json.loads((sbl.export_adapter(tmp_path / "a") / ckpt.ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] is None


def test_embedded_alias_names_the_converted_copy(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias's converted weights are not the hub's (see test_embedded_weights_are_q4_1)."""
    monkeypatch.setattr(loading, "ensure_embedded_model", lambda alias: tiny_dir)
    model, _ = loading.load_base_model("smollm2-135m", device="cpu", dtype="float32")
    assert ckpt.adapter_base(model) == (str(tiny_dir.resolve()), None)


@pytest.mark.slow
def test_embedded_weights_are_q4_1_not_the_hub_weights() -> None:
    """Why the embedded alias's adapter names the cache copy, not the hub repository.

    The hub's SmolLM2-135M-Instruct stores bfloat16 weights; the embedded model
    is dequantised from a Q4_1 GGUF, where each block of 32 weights takes at most
    16 values (4 bits: scale * q + min). Such weights are not the hub's.
    """
    from safetensors import safe_open

    from scalabl_pyro.io.assets import EMBEDDED_MODELS, ensure_embedded_model

    spec = EMBEDDED_MODELS["smollm2-135m"]
    assert not spec.identical_to_source
    path = ensure_embedded_model("smollm2-135m")
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        w = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    blocks = w.reshape(-1, 32)[:1024]
    assert max(len(torch.unique(b)) for b in blocks) <= 16
    assert not torch.equal(w.to(torch.bfloat16).float(), w)  # not bfloat16 values either


# ------------------------------------------------------------ AutoPeftModel


@pytest.mark.parametrize("config", FORMATS)
def test_auto_peft_model_loads_the_posterior_mean_model_offline(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict
) -> None:
    from peft import AutoPeftModelForCausalLM

    sbl = _scalabl(tiny_dir, **config)
    data = toy_dataset(6)
    batch = sbl.format_for(data).encode(list(data))
    mean = sbl.posterior_mean()
    with torch.no_grad():
        want_scores = sbl.model.scores(batch, mean).double()
        want_logits = sbl.subspace.peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits
    out = sbl.export_adapter(tmp_path / "adapter")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = AutoPeftModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    named_none = [str(w.message) for w in caught if "None" in str(w.message)]
    assert named_none == []
    with torch.no_grad():
        logits = auto(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    if batch.kind == "choice":
        torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
        got = _choice_scores(logits, batch)
    else:
        got = logits[:, -1, batch.class_token_ids].double()
        got = got.masked_fill(~batch.class_mask, -torch.inf)
    torch.testing.assert_close(got, want_scores, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- quiet


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    full_env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=300,
    )


def test_import_prints_nothing() -> None:
    proc = _run_python("import scalabl_pyro")
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")


def test_importing_the_api_and_loading_a_tiny_model_print_nothing(tiny_dir: Path) -> None:
    """peft imports bitsandbytes, transformers draws a "Loading weights" bar, peft warns:
    none of it reaches the terminal of a Python API user who asked for none of it."""
    code = (
        "from scalabl_pyro import ScalaBL, ScalaBLConfig\n"
        f"cfg = ScalaBLConfig(base_model={str(tiny_dir)!r}, device='cpu', dtype='float32')\n"
        "sbl = ScalaBL.from_base(cfg)\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")


def test_library_warnings_go_through_logging(tiny_dir: Path) -> None:
    """With logging configured at DEBUG, peft's deprecation warnings are records of ours."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format='%(name)s %(message)s')"
        "\n"
        "from scalabl_pyro import ScalaBL, ScalaBLConfig\n"
        f"cfg = ScalaBLConfig(base_model={str(tiny_dir)!r}, device='cpu', dtype='float32')\n"
        "sbl = ScalaBL.from_base(cfg)\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" not in proc.stderr and "Warning:" not in proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "Warning: " in line]
    assert all(line.startswith("scalabl_pyro.") for line in lines), lines


def test_bitsandbytes_messages_wait_for_quantization() -> None:
    """Whatever bitsandbytes says when imported is shown when quantisation is asked for."""
    raw = _run_python("import bitsandbytes")
    if raw.returncode != 0:
        pytest.skip("bitsandbytes is not installed")
    code = (
        "import sys, torch\n"
        "import scalabl_pyro.api\n"
        "assert 'bitsandbytes' in sys.modules  # peft imported it\n"
        "print('imported', file=sys.stderr, flush=True)\n"
        "from scalabl_pyro.io.loading import quantization_config\n"
        "quantization_config('4bit', torch.float32, torch.device('cpu'))\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    before, _, after = proc.stderr.partition("imported\n")
    assert before == ""
    assert after == raw.stderr


# ------------------------------------------------------------------- docs


def test_lm_eval_howto_cites_the_result_file() -> None:
    """docs/howto-lm-eval.md quotes benchmarks/results/lm_eval_parity.json, not other numbers."""
    result_file = REPO / "benchmarks" / "results" / "lm_eval_parity.json"
    result = json.loads(result_file.read_text())
    doc = (REPO / "docs" / "howto-lm-eval.md").read_text()
    s = result["settings"]
    agree = result["per_question_agreement"]
    divisors = result["per_question_agreement_with_lm_eval_divisors"]
    expected = [
        f"{result['max_abs_diff_choice_loglik']:.1e} nats",
        f"{result['max_abs_diff_question_logprob']:.1e} |",
        f"{result['token_mismatches']} of {result['choice_pairs']}",
        f"{result['lm_eval']['acc']:.2f} and {result['ours']['sum']:.2f}; "
        f"same per-question correctness on {agree['acc']}",
        f"{result['lm_eval']['acc_norm']:.2f} and {result['ours']['byte']:.2f}; "
        f"same per-question correctness on {agree['acc_norm_vs_byte']}",
        f"{result['lm_eval']['acc_bytes']:.2f} and {result['ours']['byte']:.2f}; "
        f"same per-question correctness on {agree['acc_bytes_vs_byte']}",
        f"`acc_norm` {divisors['acc_norm']}, `acc_bytes` {divisors['acc_bytes']}",
        f"{s['train_steps']} training steps of {s['train_batch']} questions",
        f"{s['train_questions']} ARC-Easy train questions",
        f"{s['validation_questions']} ARC-Easy validation questions",
        f"lm-eval {result['lm_eval_version']}",
    ]
    missing = [text for text in expected if text not in doc]
    assert missing == []
