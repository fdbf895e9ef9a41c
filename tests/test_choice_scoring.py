"""Shared-prefix choice scoring equals the full one-row-per-choice path.

Each question's prefix runs once per latent draw and the answers are scored
against its key/value cache (``scoring.py``). These tests pin it to the full
path in float32 on tiny Llama- and Qwen2-style models: scores and gradients,
for prefixes of different lengths (left padding), answers of one and several
tokens (right padding), several folded draws and a non-zero LoRA ``B``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from scalabl_testutils import make_scalabl, randomize_lora

from scalabl_pyro.data.examples import MCExample
from scalabl_pyro.program import scoring
from scalabl_pyro.program.formats import ChoiceFormat
from scalabl_pyro.program.scoring import (
    _buckets,
    _shared_prefix_scores,
    class_scores,
    decoder_tokens,
)

ARCHS = ["llama", "qwen2"]

EXAMPLES = [
    MCExample("a", "Which colour is the sky on a clear day?", ("blue", "red green", "a whale"), 0),
    MCExample("b", "Rocks?", ("hard", "soft"), 1),
    MCExample(
        "c",
        "What makes plants green? The sun is a star. Water boils at one hundred degrees.",
        ("chlorophyll in the leaves", "water", "A", "yellow black red"),
        2,
    ),
    MCExample("d", "Answer: B", ("yes", "no"), 0),
]


def _setup(arch: str, normalization: str = "sum"):
    sbl = make_scalabl(arch, task_format="choice")
    randomize_lora(sbl.subspace, seed=2)
    fmt = ChoiceFormat(sbl.tokenizer, 4, normalization=normalization)
    batch = fmt.encode(EXAMPLES, indices=range(len(EXAMPLES)))
    return sbl, batch


def _full(batch):
    """The same batch without the shared layout: the full path runs."""
    return replace(batch, prefix_ids=None, prefix_mask=None, answer_ids=None, answer_mask=None)


def _latents(sbl, copies: int, seed: int = 7, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(seed)
    r = sbl.subspace.rank
    out = {}
    for n in sbl.model.site_names:
        v = 1.0 + 0.5 * torch.randn((copies, 1, r), generator=gen)
        out[n] = v.requires_grad_(requires_grad)
    return out


def _shared_ran(sbl, batch, latents) -> bool:
    copies = next(iter(latents.values())).shape[0]
    folded = {
        k: v.detach().reshape(copies, -1).repeat_interleave(batch.num_rows, 0)
        for k, v in latents.items()
    }
    with torch.no_grad(), sbl.subspace.use(folded):
        return _shared_prefix_scores(sbl.subspace, batch, copies) is not None


def test_layout_rebuilds_every_row():
    sbl, batch = _setup("llama")
    assert batch.prefix_ids is not None
    assert batch.answer_ids.shape[1] > 1  # several-token answers in the batch
    assert len(set(batch.prefix_mask.sum(1).tolist())) > 1  # prefixes of different lengths
    for r in range(batch.num_rows):
        ex = int(batch.row_example[r])
        prefix = batch.prefix_ids[ex][batch.prefix_mask[ex].bool()]
        answer = batch.answer_ids[r][batch.answer_mask[r].bool()]
        row = batch.input_ids[r][batch.attention_mask[r].bool()]
        assert torch.equal(torch.cat([prefix, answer]), row)
        assert int(batch.target_mask[r].sum()) == len(answer)
    plain = ChoiceFormat(sbl.tokenizer, 4, shared_prefix=False).encode(EXAMPLES)
    assert plain.prefix_ids is None and torch.equal(plain.input_ids, batch.input_ids)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("normalization", ["sum", "mean", "byte"])
@pytest.mark.parametrize("copies", [1, 3])
@pytest.mark.parametrize("call_cost", [0, 10**6], ids=["bucket-per-length", "one-bucket"])
def test_scores_equal_full_path(arch, normalization, copies, call_cost, monkeypatch):
    monkeypatch.setitem(scoring._CALL_COST_TOKENS, "cpu", call_cost)
    sbl, batch = _setup(arch, normalization)
    lat = _latents(sbl, copies)
    assert _shared_ran(sbl, batch, lat)
    with torch.no_grad():
        shared = sbl.model.scores(batch, lat)
        full = sbl.model.scores(_full(batch), lat)
    assert shared.shape == (copies, batch.batch_size, 4)
    assert torch.equal(torch.isinf(shared), torch.isinf(full))
    assert torch.isinf(shared[:, 1, 2:]).all()  # example "b" has two choices
    torch.testing.assert_close(shared, full, atol=1e-4, rtol=1e-5)
    # the draws differ, so the copies do too
    assert (shared[0] - shared[-1]).abs().nan_to_num().max() > 1e-3 or copies == 1


@pytest.mark.parametrize("call_cost", [0, 3, 8, 100])
def test_buckets_are_the_cheapest_contiguous_split(call_cost):
    """The dynamic programme against brute force over every split of the sorted widths."""
    import itertools

    need = torch.tensor([0, 5, 1, 1, 2, 7, 2, 2, 0, 19, 3, 1])
    got = _buckets(need, call_cost)
    covered = torch.cat([sel for sel, _ in got]).sort().values
    assert torch.equal(covered, torch.nonzero(need > 0)[:, 0])  # every row once, none of 0
    assert all(int(need[sel].max()) == w for sel, w in got)
    cost = sum(len(sel) * w + call_cost for sel, w in got)
    widths = sorted({int(w) for w in need.tolist() if w > 0})
    best = float("inf")
    for k in range(len(widths)):
        for cuts in itertools.combinations(range(1, len(widths)), k):
            bounds = [0, *cuts, len(widths)]
            total = 0
            for a, z in itertools.pairwise(bounds):
                n = int(((need > (widths[a - 1] if a else 0)) & (need <= widths[z - 1])).sum())
                total += n * widths[z - 1] + call_cost
            best = min(best, total)
    assert cost == best
    assert len(_buckets(torch.zeros(3, dtype=torch.long), call_cost)) == 0


def test_decoder_tokens_count_both_layouts():
    _, batch = _setup("llama")
    assert decoder_tokens(batch, 3, shared=False) == 3 * batch.input_ids.numel()
    need = batch.answer_mask.sum(1).repeat(2) - 1
    rest = sum(len(sel) * w for sel, w in _buckets(need, scoring._CALL_COST_TOKENS["cpu"]))
    assert decoder_tokens(batch, 2) == 2 * batch.prefix_ids.numel() + rest
    assert decoder_tokens(batch, 2) < decoder_tokens(batch, 2, shared=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_point_and_shared_draws_equal_full_path(arch):
    """Outside any scope (the point) and with one draw shared by the batch."""
    sbl, batch = _setup(arch)
    with torch.no_grad():
        torch.testing.assert_close(
            class_scores(sbl.subspace, batch),
            class_scores(sbl.subspace, _full(batch)),
            atol=1e-4,
            rtol=1e-5,
        )
        lat = {k: v[0, 0] for k, v in _latents(sbl, 1).items()}
        torch.testing.assert_close(
            sbl.model.scores(batch, lat), sbl.model.scores(_full(batch), lat), atol=1e-4, rtol=1e-5
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_single_token_answers_need_one_pass(arch):
    """BoolQ-style yes/no answers: only the prefix pass runs, scores still equal."""
    sbl = make_scalabl(arch, task_format="choice")
    randomize_lora(sbl.subspace, seed=3)
    exs = [
        MCExample("p", "The sun is a star. Is it hot?", ("yes", "no"), 0),
        MCExample("q", "Rocks are hard?", ("yes", "no"), 1),
    ]
    batch = ChoiceFormat(sbl.tokenizer, 2).encode(exs)
    assert batch.answer_ids.shape[1] == 1
    lat = _latents(sbl, 2)
    assert _shared_ran(sbl, batch, lat)
    with torch.no_grad():
        torch.testing.assert_close(
            sbl.model.scores(batch, lat), sbl.model.scores(_full(batch), lat), atol=1e-4, rtol=1e-5
        )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("call_cost", [0, 10**6], ids=["bucket-per-length", "one-bucket"])
def test_gradients_equal_full_path(arch, call_cost, monkeypatch):
    """Gradients w.r.t. LoRA factors and the latent draws flow through the shared prefix."""
    monkeypatch.setitem(scoring._CALL_COST_TOKENS, "cpu", call_cost)
    sbl, batch = _setup(arch)
    sbl.model.train()
    params = sbl.subspace.lora_parameters()
    grads = []
    for b in (batch, _full(batch)):
        lat = _latents(sbl, 2, requires_grad=True)
        scores = sbl.model.scores(b, lat)
        logp = torch.log_softmax(scores, -1).gather(-1, b.labels.expand(2, -1)[..., None])
        for p in params:
            p.grad = None
        logp.sum().backward()
        grads.append(
            [p.grad.clone() for p in params] + [lat[n].grad.clone() for n in sbl.model.site_names]
        )
    shared, full = grads
    assert any(g.abs().max() > 1e-4 for g in shared[: len(params)])
    for g_s, g_f in zip(shared, full, strict=True):
        torch.testing.assert_close(g_s, g_f, atol=1e-4, rtol=1e-4)


def test_falls_back_where_the_shared_path_cannot_apply(caplog):
    sbl, batch = _setup("llama")
    lat = _latents(sbl, 2)
    with torch.no_grad():
        full = sbl.model.scores(_full(batch), lat)
        # per-row draws that differ between a question's choices: the prefix cannot be shared
        folded = {
            k: 1.0 + 0.1 * torch.randn(2 * batch.num_rows, v.shape[-1]) for k, v in lat.items()
        }
        with sbl.subspace.use(folded):
            assert _shared_prefix_scores(sbl.subspace, batch, 2) is None
            torch.testing.assert_close(
                class_scores(sbl.subspace, batch, 2),
                class_scores(sbl.subspace, _full(batch), 2),
            )
        # activation checkpointing turns the cache off: the full path runs
        sbl.model.lm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        assert not _shared_ran(sbl, batch, lat)
        torch.testing.assert_close(sbl.model.scores(batch, lat), full, atol=1e-5, rtol=1e-5)
    # a prefix cut differently per choice by truncation: no shared layout
    tok = sbl.tokenizer
    long = MCExample("l", "Water boils at one hundred degrees. " * 3, ("a", "red green blue"), 0)
    with caplog.at_level("WARNING"):
        cut = ChoiceFormat(tok, 2, max_length=12).encode([long])
    assert cut.num_truncated == 1 and cut.prefix_ids is None


def test_retained_scope_keeps_the_outer_draws():
    """Gradient-checkpoint recomputation sees the model's scope, not a nested prefix scope."""
    sbl, _ = _setup("llama")
    sub = sbl.subspace
    outer = {k: torch.full((6, sub.rank), 2.0) for k in sub.site_names}
    inner = {k: torch.full((2, sub.rank), 3.0) for k in sub.site_names}
    name = sub.site_names[0]
    with sub.retained():
        with sub.use(outer):
            with sub.use(inner):
                assert sub.current(name).shape[0] == 2
            assert sub.current(name).shape[0] == 6
        assert torch.equal(sub.current(name), outer[name])
    assert not sub.in_scope


@pytest.mark.slow
def test_real_smollm2_arc_easy_scores_equal():
    """The real SmolLM2-135M in float32 on six ARC-Easy validation questions, two draws."""
    from scalabl_pyro import ScalaBL, ScalaBLConfig, load_task
    from scalabl_pyro.io.loading import load_base_model

    base, tok = load_base_model("smollm2-135m", dtype="float32")
    sbl = ScalaBL(ScalaBLConfig(task_format="choice", guide="mean_field"), base, tok)
    randomize_lora(sbl.subspace, seed=4, scale=0.02)
    data = load_task("arc_easy", "validation", limit=6, seed=0)
    batch = sbl.format_for(data).encode(list(data), indices=range(len(data)))
    assert batch.prefix_ids is not None and batch.answer_ids.shape[1] > 1
    lat = _latents(sbl, 2)
    assert _shared_ran(sbl, batch, lat)
    with torch.no_grad():
        shared = sbl.model.scores(batch, lat)
        full = sbl.model.scores(_full(batch), lat)
    assert torch.isfinite(shared[full.isfinite()]).all()
    torch.testing.assert_close(shared, full, atol=1e-4, rtol=1e-5)


def test_training_steps_equal_with_and_without_the_shared_prefix():
    """End to end through the Trainer: the same losses and LoRA factors after three steps.

    The third run uses activation checkpointing, which falls back to the full path and
    recomputes layers during backward() under the model's (outer) scope.
    """
    from scalabl_testutils import lora_state, toy_dataset

    from scalabl_pyro import TrainConfig
    from scalabl_pyro.inference.train import Trainer

    data = toy_dataset(8)
    runs = []
    for shared, checkpointing in ((True, False), (False, False), (True, True)):
        sbl = make_scalabl("llama", task_format="choice", guide="mean_field")
        randomize_lora(sbl.subspace, seed=2)
        fmt = ChoiceFormat(sbl.tokenizer, data.num_classes, shared_prefix=shared)
        cfg = TrainConfig(
            steps=3, lr=1e-2, batch_size=4, progress=False, gradient_checkpointing=checkpointing
        )
        trainer = Trainer(sbl.model, sbl.guide, "mean_field", fmt, data, cfg, torch.device("cpu"))
        losses = [trainer.step().loss for _ in range(3)]
        runs.append((losses, lora_state(sbl)))
    for losses, state in runs[1:]:
        assert losses == pytest.approx(runs[0][0], rel=1e-4)
        for k in state:
            torch.testing.assert_close(state[k], runs[0][1][k], atol=1e-4, rtol=1e-4)


def test_mc_dropout_takes_the_shared_path_with_the_full_paths_marginals():
    """Dropout kept on: every (question, answer) score has the full path's law, while the
    answers of one question in one copy share the prefix masks (one network per question)."""
    from scalabl_pyro.methods.mc_dropout import dropout_modules

    sbl = make_scalabl("llama", task_format="choice", method="mc_dropout", dropout=0.3)
    randomize_lora(sbl.subspace, seed=2, scale=2.0)
    batch = ChoiceFormat(sbl.tokenizer, 4).encode(EXAMPLES, indices=range(len(EXAMPLES)))
    sbl.model.eval()
    for m in dropout_modules(sbl.subspace):
        m.train()
    copies = 800
    lat = {n: torch.ones(copies, 1, sbl.subspace.rank) for n in sbl.model.site_names}
    assert _shared_ran(sbl, batch, lat)
    torch.manual_seed(0)
    with torch.no_grad():
        shared = sbl.model.scores(batch, lat).double()  # (copies, B, C)
        full = sbl.model.scores(_full(batch), lat).double()
    real = torch.isfinite(full[0])
    assert torch.equal(real, torch.isfinite(shared[0]))
    s, f = shared[:, real], full[:, real]  # (copies, rows)
    assert (f.std(0) > 1e-3).all()  # the masks move every score
    se = ((s.var(0) + f.var(0)) / copies).sqrt()
    assert ((s.mean(0) - f.mean(0)).abs() < 5 * se).all()  # same mean ...
    assert ((s.std(0) / f.std(0) - 1).abs() < 0.15).all()  # ... and spread per score

    # a question whose first two answers are the same one-token text: one network per
    # question scores them alike in every copy; separate passes draw separate prefix masks
    twin = [MCExample("e", "Answer: B", ("yes", "yes", "no"), 0)]
    tb = ChoiceFormat(sbl.tokenizer, 4).encode(twin, indices=[0])
    assert tb.answer_mask[:2].sum(1).tolist() == [1, 1]
    with torch.no_grad():
        t_shared = sbl.model.scores(tb, lat)[:, 0]
        t_full = sbl.model.scores(_full(tb), lat)[:, 0]
    assert torch.equal(t_shared[:, 0], t_shared[:, 1])
    assert (t_full[:, 0] != t_full[:, 1]).float().mean() > 0.9
