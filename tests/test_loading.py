"""Tests for load_base_model / resolve_device / resolve_dtype.

Unit tests use a tiny random Llama and a byte-level BPE tokenizer trained
offline in tmp dirs (no downloads). Tests marked ``slow`` load the real
embedded SmolLM2 model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.io import loading
from scalabl_pyro.io.loading import load_base_model, resolve_device, resolve_dtype

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France? Answer: Paris.",
    "Which of these is a mammal? A whale, a shark, a trout, or a squid.",
] * 20


def _save_tiny_model(
    path: Path, *, special: dict[str, str], seed: int = 0
) -> tuple[Path, PreTrainedTokenizerFast]:
    """Save a tiny random Llama and an offline-trained tokenizer with the given special tokens."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, special_tokens=list(special.values()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, **special)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny model whose tokenizer has bos/eos/unk but no pad token."""
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return _save_tiny_model(tmp_path_factory.mktemp("tiny"), special=special)[0]


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make "auto" deterministic: behave as on a CPU-only machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --------------------------------------------------------------------------- device / dtype


def test_resolve_device(no_cuda: None) -> None:
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_auto_prefers_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("bad", ["gpu0", "cuda:x", ""])
def test_resolve_device_rejects_unknown(bad: str) -> None:
    with pytest.raises(ScalaBLError, match="unknown device"):
        resolve_device(bad)


def test_resolve_device_cuda_unavailable(no_cuda: None) -> None:
    with pytest.raises(ScalaBLError, match="CUDA is not available"):
        resolve_device("cuda")


def test_resolve_dtype(no_cuda: None) -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16") == torch.float16
    assert resolve_dtype("torch.float32") == torch.float32
    assert resolve_dtype("BF16") == torch.bfloat16
    assert resolve_dtype(torch.float16) == torch.float16


@pytest.mark.parametrize("bad", ["float8", "int8", torch.int64])
def test_resolve_dtype_rejects_unknown(bad: str | torch.dtype) -> None:
    with pytest.raises(ScalaBLError, match="dtype"):
        resolve_dtype(bad, "cpu")


# --------------------------------------------------------------------------- loading


def test_load_local_dir_pads_left_with_eos(tiny_dir: Path, no_cuda: None) -> None:
    model, tok = load_base_model(str(tiny_dir))
    assert tok.padding_side == "left"
    assert tok.pad_token == "</s>" and tok.pad_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    assert not model.training
    batch = tok(["The quick brown fox", "Paris"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1
    assert batch["input_ids"][1, 0] == tok.pad_token_id
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(logits).all()


def test_load_accepts_path_object_and_dtype(tiny_dir: Path) -> None:
    model, _ = load_base_model(tiny_dir, dtype="bfloat16", device="cpu")  # type: ignore[arg-type]
    assert model.dtype == torch.bfloat16
    model, _ = load_base_model(str(tiny_dir), dtype=torch.float16, device=torch.device("cpu"))
    assert model.dtype == torch.float16


def test_pad_falls_back_to_unk(tmp_path: Path) -> None:
    path, _ = _save_tiny_model(tmp_path / "m", special={"unk_token": "<unk>"})
    model, tok = load_base_model(str(path), device="cpu")
    assert tok.pad_token == "<unk>"
    assert model.config.pad_token_id == tok.unk_token_id


def test_pad_token_added_and_embeddings_resized(tmp_path: Path) -> None:
    path, saved_tok = _save_tiny_model(tmp_path / "m", special={})
    vocab = len(saved_tok)
    model, tok = load_base_model(str(path), device="cpu")
    assert tok.pad_token is not None
    assert len(tok) == vocab + 1 and tok.pad_token_id == vocab
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.pad_token_id == vocab
    batch = tok(["quick fox", "a"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_existing_pad_token_is_kept(tmp_path: Path) -> None:
    special = {"eos_token": "</s>", "pad_token": "<pad>"}
    path, _ = _save_tiny_model(tmp_path / "m", special=special)
    model, tok = load_base_model(str(path), device="cpu")
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id


def test_embedded_alias_goes_through_the_cache(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def fake_ensure(alias: str) -> Path:
        asked.append(alias)
        return tiny_dir

    monkeypatch.setattr(loading, "ensure_embedded_model", fake_ensure)
    model, tok = load_base_model("smollm2-135m", device="cpu")
    assert asked == ["smollm2-135m"]
    assert model.config.num_hidden_layers == 2 and tok.padding_side == "left"


# --------------------------------------------------------------------------- errors


def _one_line(exc: pytest.ExceptionInfo[ScalaBLError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unknown_name_lists_aliases() -> None:
    with pytest.raises(ScalaBLError) as info:
        load_base_model("no-such-model")
    message = _one_line(info)
    assert "unknown model 'no-such-model'" in message and "smollm2-135m" in message


@pytest.mark.parametrize("name", ["./missing/model/dir", "a/b/c", "~/nope"])
def test_non_hub_looking_missing_paths_are_rejected(name: str) -> None:
    with pytest.raises(ScalaBLError, match="unknown model"):
        load_base_model(name)


def test_dir_without_config_json(tmp_path: Path) -> None:
    with pytest.raises(ScalaBLError, match="has no config.json") as info:
        load_base_model(str(tmp_path))
    _one_line(info)


def test_file_instead_of_dir(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    with pytest.raises(ScalaBLError, match="is a file, not a model directory"):
        load_base_model(str(file))


def test_broken_config_becomes_scalabl_error(tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "config.json").write_text(json.dumps({"model_type": "definitely-not-a-model"}))
    with pytest.raises(ScalaBLError, match="could not load model") as info:
        load_base_model(str(broken), device="cpu")
    message = _one_line(info)
    assert "a local directory with config.json, or a reachable hub id" in message


def test_unreachable_hub_id_becomes_scalabl_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError(
            "We couldn't connect to the hub to load the files.\nCheck your internet connection."
        )

    monkeypatch.setattr(loading, "hub_status", lambda *a, **k: "online")
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", unreachable)
    with pytest.raises(ScalaBLError) as info:
        load_base_model("some-org/some-model", device="cpu")
    assert _one_line(info) == (
        "could not load model 'some-org/some-model': We couldn't connect to the hub to load "
        "the files; pass an embedded alias (smollm2-135m), a local directory with config.json, "
        "or a reachable hub id"
    )


def test_hub_id_gets_revision_and_trust_flag(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path
) -> None:
    seen: list[tuple[str, dict[str, object]]] = []
    real_tok = loading.AutoTokenizer.from_pretrained
    real_model = loading.AutoModelForCausalLM.from_pretrained

    def tok_spy(name: str, **kwargs: object) -> object:
        seen.append((name, kwargs))
        return real_tok(str(tiny_dir), padding_side="left")

    def model_spy(name: str, **kwargs: object) -> object:
        seen.append((name, kwargs))
        return real_model(str(tiny_dir), dtype=kwargs["dtype"])

    monkeypatch.setattr(loading, "hub_status", lambda *a, **k: "online")
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", tok_spy)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", model_spy)
    load_base_model("org/name", revision="abc123", trust_remote_code=True, device="cpu")
    assert [name for name, _ in seen] == ["org/name", "org/name"]
    for _, kwargs in seen:
        assert kwargs["revision"] == "abc123" and kwargs["trust_remote_code"] is True
    assert seen[1][1]["dtype"] == torch.float32


def _spy_loads(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> list[dict[str, object]]:
    """Replace both from_pretrained calls by loads of ``tiny_dir``; return their kwargs."""
    seen: list[dict[str, object]] = []
    real_tok = loading.AutoTokenizer.from_pretrained
    real_model = loading.AutoModelForCausalLM.from_pretrained

    def tok_spy(name: str, **kwargs: object) -> object:
        seen.append(kwargs)
        return real_tok(str(tiny_dir), padding_side="left")

    def model_spy(name: str, **kwargs: object) -> object:
        seen.append(kwargs)
        return real_model(str(tiny_dir), dtype=kwargs["dtype"])

    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", tok_spy)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", model_spy)
    return seen


def test_unreachable_hub_without_cache_fails_before_any_download(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path
) -> None:
    import huggingface_hub

    seen = _spy_loads(monkeypatch, tiny_dir)
    monkeypatch.setattr(loading, "hub_status", lambda *a, **k: "ConnectError: no route")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(ScalaBLError) as info:
        load_base_model("some-org/some-model", device="cpu")
    message = _one_line(info)
    assert message.startswith("could not load model 'some-org/some-model': the Hugging Face hub")
    assert "cannot be reached (ConnectError: no route)" in message
    assert "not in the local cache" in message and "smollm2-135m" in message
    assert seen == []  # no from_pretrained call, so no minute of retries


def test_unreachable_hub_with_cache_reads_the_cache_only(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path
) -> None:
    import huggingface_hub

    seen = _spy_loads(monkeypatch, tiny_dir)
    monkeypatch.setattr(loading, "hub_status", lambda *a, **k: "ConnectError: no route")
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(tiny_dir / "config.json")
    )
    load_base_model("some-org/some-model", device="cpu")
    assert [kw.get("local_files_only") for kw in seen] == [True, True]


@pytest.mark.parametrize("status", ["online", "offline"])
def test_reachable_or_offline_hub_loads_normally(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, status: str
) -> None:
    seen = _spy_loads(monkeypatch, tiny_dir)
    monkeypatch.setattr(loading, "hub_status", lambda *a, **k: status)
    load_base_model("some-org/some-model", device="cpu")
    assert [kw.get("local_files_only") for kw in seen] == [None, None]


def test_local_models_never_probe_the_hub(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> None:
    def no_probe(*args: object, **kwargs: object) -> str:
        raise AssertionError("a local directory must not probe the hub")

    monkeypatch.setattr(loading, "hub_status", no_probe)
    load_base_model(str(tiny_dir), device="cpu")


def test_probe_hub_against_a_local_server_and_a_closed_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real probe (huggingface_hub's own HTTP session) answers in well under a second."""
    import http.server
    import socket
    import threading
    import time

    from huggingface_hub import constants

    from scalabl_pyro.io import hub_access

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        assert hub_access.probe_hub(timeout=2) is None  # a 501 answer still means reachable
        assert hub_access.hub_status(timeout=2) == "online"
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed}")
    start = time.monotonic()
    reason = hub_access.hub_status(timeout=2)
    assert reason not in ("online", "offline") and "\n" not in reason
    assert time.monotonic() - start < 2
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_access.hub_status() == "offline"


def test_revision_with_local_dir_is_rejected(tiny_dir: Path) -> None:
    with pytest.raises(ScalaBLError, match="only applies to hub ids"):
        load_base_model(str(tiny_dir), revision="main")


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_embedded_model_forward() -> None:
    model, tok = load_base_model("smollm2-135m", device="cpu")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.get_output_embeddings().weight.data_ptr() == (
        model.get_input_embeddings().weight.data_ptr()
    ), "lm_head stays tied to the embeddings"
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert tok.chat_template is not None
    batch = tok(["The capital of France is", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"


# --------------------------------------------------------------------------- lean loading


@pytest.mark.parametrize("shard", [None, "60KB"], ids=["single", "sharded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_lean_load_equals_from_pretrained(tmp_path: Path, shard, dtype) -> None:
    """The pread/state-dict path gives exactly the weights transformers' own path gives."""
    from transformers import AutoModelForCausalLM

    path, _ = _save_tiny_model(
        tmp_path / "m", special={"eos_token": "</s>", "unk_token": "<unk>"}, seed=3
    )
    if shard is not None:  # re-save in several shards, with an index file
        m = LlamaForCausalLM.from_pretrained(path)
        for f in path.glob("model*.safetensors"):
            f.unlink()
        m.save_pretrained(path, max_shard_size=shard)
        assert (path / "model.safetensors.index.json").is_file()
    lean = loading._load_lean(path, dtype, torch.device("cpu"), trust_remote_code=False)
    assert lean is not None
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    lean_state, plain_state = lean.state_dict(), plain.state_dict()
    assert lean_state.keys() == plain_state.keys()
    for k, v in plain_state.items():
        assert lean_state[k].dtype == dtype, k
        assert torch.equal(lean_state[k], v), k
    model, _ = load_base_model(str(path), dtype=dtype, device="cpu")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain_state.items())


def test_lean_load_keeps_tied_head(tmp_path: Path) -> None:
    from scalabl_pyro.testing import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "tied")
    tok.save_pretrained(tmp_path / "tied")
    loaded, _ = load_base_model(str(tmp_path / "tied"), dtype="bfloat16", device="cpu")
    head, emb = loaded.get_output_embeddings().weight, loaded.get_input_embeddings().weight
    assert head.data_ptr() == emb.data_ptr()
    assert torch.equal(emb, model.get_input_embeddings().weight.to(torch.bfloat16))


def test_lean_load_falls_back_without_safetensors(tmp_path: Path) -> None:
    """A directory of pytorch_model.bin files takes the plain from_pretrained path."""
    path, _ = _save_tiny_model(tmp_path / "m", special={"eos_token": "</s>"})
    assert loading._safetensors_files(path) is not None
    torch.save(LlamaForCausalLM.from_pretrained(path).state_dict(), path / "pytorch_model.bin")
    for f in path.glob("*.safetensors"):
        f.unlink()
    assert loading._safetensors_files(path) is None
    model, _ = load_base_model(str(path), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16
