"""SubspaceLoRA: ``h = W0 x + (alpha/r) B diag(s) A x`` is peft's LoRA with ``diag(s) A``.

Everything runs on the offline tiny random Llama / Qwen2 models.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from scalabl_testutils import randomize_lora

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.adapters import HEAD_SITE, SubspaceLoRA, site_name
from scalabl_pyro.testing import tiny_model_and_tokenizer

ARCHS = ("llama", "qwen2")
RANK, ALPHA = 4, 8.0
TARGETS = ("q_proj", "v_proj")
TEXTS = ["Question: Which of these is a mammal?\nAnswer:", "The sun is a star."]


def _inputs(tok):
    return tok(TEXTS, return_tensors="pt", padding=True)


def _random_latents(sub: SubspaceLoRA, seed: int = 3, rows: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    shape = (RANK,) if rows is None else (rows, RANK)
    return {n: torch.randn(shape, generator=gen) for n in sub.site_names}


@pytest.mark.parametrize("arch", ARCHS)
def test_fixed_s_equals_plain_peft_lora_with_s_folded_into_A(arch):
    model, tok = tiny_model_and_tokenizer(arch)
    enc = _inputs(tok)
    with torch.no_grad():
        base_logits = model(**enc).logits
    sub = SubspaceLoRA(model, rank=RANK, alpha=ALPHA, target_modules=TARGETS, seed=0)
    randomize_lora(sub)
    s = _random_latents(sub)
    with torch.no_grad(), sub.use(s):
        hooked = sub.peft_model(**enc).logits

    # An independent plain peft model on an identical base: A' = diag(s) A, same B.
    plain_base, _ = tiny_model_and_tokenizer(arch)
    plain = get_peft_model(
        plain_base,
        LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS)),
    )
    n_copied = 0
    with torch.no_grad():
        for path, module in plain.named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                src = sub.layers[site_name(path)]
                a = src.lora_A["default"].weight
                module.lora_A["default"].weight.copy_(torch.diag(s[site_name(path)]) @ a)
                module.lora_B["default"].weight.copy_(src.lora_B["default"].weight)
                n_copied += 1
        plain_logits = plain(**enc).logits
    assert n_copied == len(sub.site_names) == 2 * model.config.num_hidden_layers
    torch.testing.assert_close(hooked, plain_logits, atol=1e-5, rtol=1e-5)
    # ... and the adaptation is not a no-op
    assert (hooked - base_logits).abs().max() > 1e-2

    # Removing the hooks on the subspace model gives plain LoRA with s = 1.
    sub.remove_hooks()
    with torch.no_grad():
        for name, layer in sub.layers.items():
            layer.lora_A["default"].weight.mul_(s[name][:, None])
        unhooked = sub.peft_model(**enc).logits
    torch.testing.assert_close(unhooked, hooked, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_output_matches_the_formula(arch):
    model, _ = tiny_model_and_tokenizer(arch)
    sub = SubspaceLoRA(model, rank=RANK, alpha=ALPHA, target_modules=TARGETS, seed=0)
    randomize_lora(sub)
    s = _random_latents(sub)
    x = torch.randn(3, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for name, layer in sub.layers.items():
        w0, b0 = layer.base_layer.weight, layer.base_layer.bias
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        expected = x @ w0.T + (ALPHA / RANK) * ((x @ a.T) * s[name]) @ b.T
        if b0 is not None:
            expected = expected + b0
        with torch.no_grad(), sub.use(s):
            got = layer(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if arch == "qwen2":  # the Qwen2 q/v projections carry a bias: the formula covered it
        assert all(layer.base_layer.bias is not None for layer in sub.layers.values())


def test_per_row_latents_equal_separate_passes():
    model, tok = tiny_model_and_tokenizer("llama")
    enc = _inputs(tok)
    sub = SubspaceLoRA(model, rank=RANK, alpha=ALPHA, target_modules=TARGETS, seed=0)
    randomize_lora(sub)
    rows = _random_latents(sub, rows=2)
    with torch.no_grad():
        with sub.use(rows):
            together = sub.peft_model(**enc).logits
        for i in range(2):
            with sub.use({k: v[i] for k, v in rows.items()}):
                alone = sub.peft_model(**enc).logits
            torch.testing.assert_close(together[i], alone[i], atol=1e-5, rtol=1e-5)
        assert (together[0] - alone[0]).abs().max() > 1e-3  # row 0 really used its own s


@pytest.mark.parametrize("arch", ARCHS)
def test_svd_init_orthonormal_rows_singular_values_and_zero_B(arch):
    raw_model, tok = tiny_model_and_tokenizer(arch)
    raw = SubspaceLoRA(raw_model, rank=RANK, alpha=ALPHA, svd_init=False, seed=0)
    model, _ = tiny_model_and_tokenizer(arch)
    enc = _inputs(tok)
    with torch.no_grad():
        base_logits = model(**enc).logits
    sub = SubspaceLoRA(model, rank=RANK, alpha=ALPHA, seed=0)
    assert sub.site_names == raw.site_names
    assert len(sub.site_names) == 2 * model.config.num_hidden_layers
    for name in sub.site_names:
        a = sub.layers[name].lora_A["default"].weight.detach()
        a_raw = raw.layers[name].lora_A["default"].weight.detach()
        assert a.shape == (RANK, model.config.hidden_size)
        torch.testing.assert_close(a @ a.T, torch.eye(RANK), atol=1e-5, rtol=0)
        svals = torch.linalg.svdvals(a_raw.double()).float()
        torch.testing.assert_close(sub.init_values[name], svals, atol=1e-5, rtol=1e-5)
        assert torch.all(svals > 0)
        # diag(S) Vh spans the random draw's row space with the same Gram matrix
        scaled = sub.init_values[name][:, None] * a
        torch.testing.assert_close(scaled.T @ scaled, a_raw.T @ a_raw, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a_raw @ a.T @ a, a_raw, atol=1e-5, rtol=1e-4)
        assert torch.count_nonzero(sub.layers[name].lora_B["default"].weight) == 0
        assert torch.equal(raw.init_values[name], torch.ones(RANK))
    # B = 0: whatever s is, the adapted model computes the base model
    for s in (sub.init_values, _random_latents(sub)):
        with torch.no_grad(), sub.use(s):
            logits = sub.peft_model(**enc).logits
        torch.testing.assert_close(logits, base_logits, atol=1e-6, rtol=0)
    assert sub.num_latents == RANK * len(sub.site_names)
    assert sub.num_lora_parameters() == sum(
        RANK * (lay.base_layer.in_features + lay.base_layer.out_features)
        for lay in sub.layers.values()
    )


def test_site_names_drop_the_peft_prefix():
    assert site_name("base_model.model.model.layers.0.self_attn.q_proj") == (
        "s.model.layers.0.self_attn.q_proj"
    )
    model, _ = tiny_model_and_tokenizer("llama")
    sub = SubspaceLoRA(model, rank=RANK, target_modules=("v_proj",))
    assert sub.site_names == [
        f"s.model.layers.{i}.self_attn.v_proj" for i in range(model.config.num_hidden_layers)
    ]


def test_class_head_formula_and_svd_init():
    model, tok = tiny_model_and_tokenizer("llama")
    ids = torch.tensor([tok.convert_tokens_to_ids(t) for t in ("ĠA", "ĠB", "ĠC")])
    assert len(set(ids.tolist())) == 3 and tok.unk_token_id not in ids.tolist()
    head_w = model.get_output_embeddings().weight.detach().clone()
    sub = SubspaceLoRA(
        model, rank=RANK, alpha=ALPHA, target_modules=("q_proj", "lm_head"), class_token_ids=ids
    )
    assert sub.site_names[-1] == HEAD_SITE
    head = sub.head
    torch.testing.assert_close(head.lora_A @ head.lora_A.T, torch.eye(RANK), atol=1e-5, rtol=0)
    assert torch.count_nonzero(head.lora_B) == 0
    assert head.lora_B.shape == (3, RANK)
    hidden = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    s = torch.randn(RANK, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(head(hidden, s), hidden @ head_w[ids].T, atol=1e-5, rtol=1e-5)
        randomize_lora(sub)
        expected = hidden @ head_w[ids].T + (ALPHA / RANK) * ((hidden @ head.lora_A.T) * s) @ (
            head.lora_B.T
        )
        torch.testing.assert_close(head(hidden, s), expected, atol=1e-5, rtol=1e-5)
        # per-row s
        s_rows = torch.randn(5, RANK, generator=torch.Generator().manual_seed(2))
        rows = head(hidden, s_rows)
        for i in range(5):
            torch.testing.assert_close(rows[i], head(hidden[i : i + 1], s_rows[i])[0])


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (("embed_tokens",), "not a linear layer"),
        (("input_layernorm",), "not a linear layer"),
        (("q_proj", "nonexistent_proj"), "not found"),
        ((), "no target modules"),
        (("lm_head",), "answer tokens"),
    ],
)
def test_bad_targets_raise(targets, match):
    model, _ = tiny_model_and_tokenizer("qwen2")
    with pytest.raises(ScalaBLError, match=match):
        SubspaceLoRA(model, rank=RANK, target_modules=targets)


def test_head_only_target_is_a_clear_error():
    model, _ = tiny_model_and_tokenizer("llama")
    with pytest.raises(ScalaBLError, match="lm_head alone"):
        SubspaceLoRA(model, rank=RANK, target_modules=("lm_head",), class_token_ids=torch.arange(3))


def test_draws_are_scoped_and_outside_a_scope_the_point_is_used():
    model, tok = tiny_model_and_tokenizer("llama")
    with pytest.raises(ScalaBLError, match="rank"):
        SubspaceLoRA(model, rank=0)
    sub = SubspaceLoRA(model, rank=RANK)
    randomize_lora(sub)
    with (
        pytest.raises(ScalaBLError, match="missing"),
        sub.use({sub.site_names[0]: torch.ones(RANK)}),
    ):
        pass
    assert not sub.in_scope
    first = {n: torch.ones(RANK) for n in sub.site_names}
    second = {n: torch.zeros(RANK) for n in sub.site_names}
    with sub.use(first):
        with sub.use(second):
            assert sub.current(sub.site_names[0]) is second[sub.site_names[0]]
        assert sub.current(sub.site_names[0]) is first[sub.site_names[0]]
    assert not sub.in_scope
    # outside any scope: the point (initial values until the family follows a guide)
    with torch.no_grad():
        plain = sub.peft_model(**_inputs(tok)).logits
        with sub.use(sub.init_values):
            scoped = sub.peft_model(**_inputs(tok)).logits
        torch.testing.assert_close(plain, scoped, rtol=0, atol=0)
        point = _random_latents(sub, seed=11)
        guide = _MedianAt(point)  # a guide stand-in whose posterior median is ``point``
        sub.follow(guide)
        with sub.use(point):
            want = sub.peft_model(**_inputs(tok)).logits
        torch.testing.assert_close(sub.peft_model(**_inputs(tok)).logits, want, rtol=0, atol=0)
    # a failing forward inside a scope leaves nothing behind
    with pytest.raises(RuntimeError), sub.use(_random_latents(sub, rows=5)), torch.no_grad():
        sub.peft_model(**_inputs(tok))  # 5 rows of draws for a batch of 2: shape error
    assert not sub.in_scope


class _MedianAt:
    """A stand-in for a guide: ``median()`` returns a fixed point."""

    def __init__(self, point) -> None:
        self._point = point

    def median(self):
        return self._point
