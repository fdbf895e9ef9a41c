"""Class scores from a (subspace-LoRA) language model for a :class:`TaskBatch`.

* Letter format: the decoder's last-position hidden state times the output
  head's rows for the answer tokens (plus the subspace head delta if
  ``lm_head`` is adapted). No full-vocabulary logits are computed.
* Choice format: a class score is the summed (or mean) log-probability of the
  answer tokens, in float32; the output head is applied only to the hidden
  states that predict answer tokens (a 2-D matmul of P x d by d x V).

``copies`` folds several posterior samples into the batch: the inputs are
tiled ``copies`` times and the result has shape (copies * B, C).

Shared-prefix choice scoring
----------------------------
A question with C choices shares its prefix (length Lp) across C rows of
length Lp + La. The full path runs all R = sum_b C_b rows, so the prefix is
processed C times per posterior draw. The shared path runs

1. the B prefixes once per draw, left-padded, keeping the decoder's key/value
   cache: copies * B rows of Tp tokens; the last prefix position predicts
   each answer's first token;
2. the answers alone, right-padded, against the cache rows of their question
   (a new cache indexed from the prefix cache: autograd differentiates the
   index, so training gradients flow through the shared prefix): copies * R
   rows, positions continuing from each prefix's length. The last answer
   token is never an input, so single-token answers (BoolQ's yes / no) need
   no second pass at all. Rows are grouped by answer length into a few
   buckets (an exact dynamic programme that weighs padding against the cost
   of one more decoder call), because ARC's answers run from one to twenty
   tokens and padding them all to the longest would waste most of the pass.

Tokens through the decoder: about ``copies (B Tp + sum_r (La_r - 1))``
instead of ``copies R T`` (``decoder_tokens`` counts them, padding included);
on ARC-Easy (C = 4, answers a few tokens long) roughly a third.

Why a key/value cache and not packing the C answers after one prefix with a
4-D attention mask: the cache path is the one every Hugging Face decoder
implements and tests for generation (2-D padding mask, position ids, any
attention kernel: eager, SDPA, flash), while a custom 4-D mask is ignored by
flash attention and interpreted differently across models and library
versions. Packing would save the extra decoder calls and the answers'
padding; the length buckets recover most of the padding, and on a CPU the
cost is in the projections, which both run on about the same tokens.

The shared path is chosen automatically when it applies: a choice batch
with the shared layout (``ChoiceFormat(shared_prefix=True)``, no choice-
dependent truncation), a decoder whose forward takes a dynamic key/value
cache of plain full-attention layers (a sliding-window, linear-attention or
quantised cache falls back), no activation checkpointing (Hugging Face
turns the cache off while training under it), and per-row latent draws that
agree across the rows of each question (what the model's sample folding
gives). Otherwise the full path runs; both give the same scores to
round-off, which the tests check. Position ids of the shared path count
real tokens only (``cumsum(mask) - 1``); with rotary embeddings that equals
the full path's padded positions up to a common offset.

Dropout kept on (MC dropout) takes the shared path too. Masks are drawn
per element, so a row's prefix and answer passes draw exactly what one
pass over the row would; what changes is that the C answers of a question
in one copy see the same prefix masks, as they would in the lettered format
(one pass per question): a copy is one dropout network per question, and
the marginal law of every score is the full path's (tested).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.adapters import HEAD_SITE, SubspaceLoRA
from scalabl_pyro.program.formats import TaskBatch
from scalabl_pyro.program.latents import Draws

#: Fixed cost of one extra decoder call, in token positions, that the answer
#: bucketing weighs against padding (on a GPU padding is nearly free).
_CALL_COST_TOKENS = {"cpu": 32, "other": 4096}


def _scatter_scores(batch: TaskBatch, row_scores: torch.Tensor, copies: int) -> torch.Tensor:
    """(copies*R,) row scores -> (copies*B, C) with -inf for absent choices."""
    b, c, r = batch.batch_size, batch.num_classes, batch.num_rows
    offs = torch.arange(copies, device=row_scores.device).repeat_interleave(r)
    ex = batch.row_example.repeat(copies) + offs * b
    ch = batch.row_choice.repeat(copies)
    out = torch.full(
        (copies * b, c), float("-inf"), dtype=row_scores.dtype, device=row_scores.device
    )
    return out.index_put((ex, ch), row_scores)


def class_scores(subspace: SubspaceLoRA, batch: TaskBatch, copies: int = 1) -> torch.Tensor:
    """Class scores (copies * B, C) under the latents in scope on ``subspace``."""
    model: nn.Module = subspace.peft_model
    if batch.kind == "letter":
        ids, att, _ = batch.tile_rows(copies)
        decoder = model.get_base_model().get_decoder()
        hidden = decoder(input_ids=ids, attention_mask=att).last_hidden_state[:, -1]
        if subspace.head is not None:
            logits = subspace.head(hidden, subspace.current(HEAD_SITE))
        else:
            head = model.get_output_embeddings().weight[batch.class_token_ids]
            logits = hidden @ head.T
        logits = logits.float()
        mask = batch.class_mask.repeat(copies, 1)
        return logits.masked_fill(~mask, float("-inf"))
    if batch.prefix_ids is not None:
        scores = _shared_prefix_scores(subspace, batch, copies)
        if scores is not None:
            return scores
    return _full_choice_scores(subspace, batch, copies)


def _row_scores(
    model: nn.Module,
    batch: TaskBatch,
    h: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    counts: torch.Tensor,
    copies: int,
) -> torch.Tensor:
    """Scores (copies*B, C) from the hidden states (P, d) that predict answer tokens.

    ``targets`` (P,) are the tokens predicted, ``rows`` (P,) their row among
    the copies*R rows and ``counts`` (copies*R,) each row's answer length; a
    row's score is the sum of its tokens' log-probabilities, divided by the
    count under ``normalization="mean"`` and by the answer's UTF-8 bytes
    under ``"byte"``. The head is a 2-D matmul of P x d by
    d x V, never a (rows, T, V) one.
    """
    logits = model.get_output_embeddings()(h).float()
    # log p(target) = logit - logsumexp(logits): no second (P, V) tensor as log_softmax makes
    tok_lp = logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    row = torch.zeros(counts.shape[0], dtype=tok_lp.dtype, device=tok_lp.device)
    row = row.index_add(0, rows, tok_lp)
    if batch.normalization == "mean":
        row = row / counts.to(row.dtype)
    elif batch.normalization == "byte":
        if batch.answer_bytes is None:
            raise ScalaBLError("normalization='byte' needs the batch's answer_bytes")
        row = row / batch.answer_bytes.repeat(copies).to(row.device, row.dtype)
    return _scatter_scores(batch, row, copies)


def _full_choice_scores(subspace: SubspaceLoRA, batch: TaskBatch, copies: int) -> torch.Tensor:
    """The full path: one decoder pass over every (question, choice) row."""
    model: nn.Module = subspace.peft_model
    ids, att, tmask = batch.tile_rows(copies)
    assert tmask is not None
    decoder = model.get_base_model().get_decoder()
    hidden = decoder(input_ids=ids, attention_mask=att).last_hidden_state  # (R', T, d)
    predicts = tmask[:, 1:]  # position t predicts token t + 1
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(predicts)[predicts]
    h, targets = hidden[:, :-1][predicts], ids[:, 1:][predicts]
    return _row_scores(model, batch, h, targets, rows, tmask.sum(1), copies)


def _cache_factory(decoder: nn.Module) -> tuple[str, Callable[[], Any]] | None:
    """(forward keyword, maker of empty dynamic caches) for this decoder; None where the
    shared path cannot apply (no such keyword, activation checkpointing, a cache
    with layers other than plain full-attention ones)."""
    if any(getattr(m, "gradient_checkpointing", False) for m in decoder.modules()):
        return None
    params = inspect.signature(decoder.forward).parameters
    key = next((k for k in ("cache", "past_key_values") if k in params), None)
    config = getattr(decoder, "config", None)
    if key is None or config is None:
        return None
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=config)
    except (ImportError, TypeError, ValueError, AttributeError):
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return key, lambda: DynamicCache(config=config)


def _select_rows(cache: Any, rows: torch.Tensor, make: Callable[[], Any]) -> Any:
    """A new cache holding ``rows`` of ``cache`` (indexing: autograd flows back to it)."""
    out = make()
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys[rows], layer.values[rows], i)
    return out


def _buckets(need: torch.Tensor, call_cost: int) -> list[tuple[torch.Tensor, int]]:
    """Split rows by answer length so that padding costs little: [(row ids, width)].

    ``need`` (rows,) is each row's number of answer tokens that are decoder
    inputs (its answer length - 1; rows with 0 need no second pass). A bucket
    of ``n`` rows padded to width ``w`` costs ``n w + call_cost`` token
    positions; an exact dynamic programme over the distinct widths picks the
    split of least total cost.
    """
    widths = sorted({int(w) for w in need.tolist() if w > 0})
    if not widths:
        return []
    counts = [int((need == w).sum()) for w in widths]
    k = len(widths)
    best = [0.0] + [float("inf")] * k  # best[j]: cost of covering widths[:j]
    cut = [0] * (k + 1)
    for j in range(1, k + 1):
        rows = 0
        for i in range(j, 0, -1):  # last bucket = widths[i-1 : j], padded to widths[j-1]
            rows += counts[i - 1]
            cost = best[i - 1] + rows * widths[j - 1] + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    out, j = [], k
    while j > 0:
        i = cut[j]
        sel = torch.nonzero((need > (widths[i - 1] if i > 0 else 0)) & (need <= widths[j - 1]))
        out.append((sel[:, 0], widths[j - 1]))
        j = i
    return out[::-1]


def _prefix_draws(
    subspace: SubspaceLoRA, batch: TaskBatch, rows: Draws, copies: int, owner: torch.Tensor
) -> Draws | None:
    """The draws for the copies*B prefix rows, or None if a question's rows disagree.

    Per-row draws ``rows`` come as (copies*R, r), one per answer row;
    ``owner`` (copies*R,) is each answer row's prefix row. Shared draws (r,)
    pass as is.
    """
    b, r = batch.batch_size, batch.num_rows
    first = torch.full((b,), r, dtype=torch.long, device=owner.device).scatter_reduce(
        0, batch.row_example, torch.arange(r, device=owner.device), reduce="amin"
    )
    pick = (torch.arange(copies, device=owner.device)[:, None] * r + first[None]).reshape(-1)
    out = {}
    for name, v in rows.items():
        if v.dim() == len(subspace.event_shape(name)) + 1:  # per-row draws
            if v.shape[0] != copies * r:
                return None
            pv = v[pick]
            if not torch.equal(pv[owner], v):
                return None
            v = pv
        out[name] = v
    return out


def _shared_prefix_scores(
    subspace: SubspaceLoRA, batch: TaskBatch, copies: int
) -> torch.Tensor | None:
    """The shared path (module docstring); None where it cannot apply."""
    model: nn.Module = subspace.peft_model
    if not subspace.shares_prefix:
        return None  # per-row noise (flipout) would differ between the prefix and answer passes
    decoder = model.get_base_model().get_decoder()
    made = _cache_factory(decoder)
    if made is None:
        return None
    key, make_cache = made
    assert batch.prefix_ids is not None and batch.prefix_mask is not None
    assert batch.answer_ids is not None and batch.answer_mask is not None
    b = batch.batch_size
    dev = batch.prefix_ids.device
    # owner[k * R + r] = k * B + row_example[r]: the prefix row of answer row r in copy k
    owner = (torch.arange(copies, device=dev)[:, None] * b + batch.row_example[None]).reshape(-1)
    row_draws = {name: subspace.current(name) for name in subspace.site_names}
    draws = _prefix_draws(subspace, batch, row_draws, copies, owner)
    if draws is None:
        return None
    p_ids = batch.prefix_ids.repeat(copies, 1)
    p_att = batch.prefix_mask.repeat(copies, 1)
    p_pos = (p_att.cumsum(1) - 1).clamp(min=0)
    cache = make_cache()
    with subspace.use(draws):
        out = decoder(
            input_ids=p_ids,
            attention_mask=p_att,
            position_ids=p_pos,
            use_cache=True,
            **{key: cache},
        )
    if getattr(out, key, None) is not cache:
        return None
    a_ids = batch.answer_ids.repeat(copies, 1)  # (copies*R, Ta), right-padded
    a_att = batch.answer_mask.repeat(copies, 1)
    n_rows = a_ids.shape[0]
    # the last prefix position (left padding: the last column) predicts each first answer token
    hs = [out.last_hidden_state[:, -1][owner]]
    targets = [a_ids[:, 0]]
    rows = [torch.arange(n_rows, device=dev)]
    p_len = p_att.sum(1)
    counts = a_att.sum(1)
    call_cost = _CALL_COST_TOKENS.get(dev.type, _CALL_COST_TOKENS["other"])
    for sel, width in _buckets(counts - 1, call_cost):
        own = owner[sel]
        ids, att = a_ids[sel, :width], a_att[sel, :width]
        bucket_draws = {k: v[sel] if v.dim() == 2 else v for k, v in row_draws.items()}
        with subspace.use(bucket_draws):
            rest = decoder(
                input_ids=ids,
                attention_mask=torch.cat([p_att[own], att], dim=1),
                position_ids=p_len[own][:, None] + torch.arange(width, device=dev),
                use_cache=True,
                **{key: _select_rows(cache, own, make_cache)},
            ).last_hidden_state  # (n, width, d): position t predicts answer token t + 1
        nxt = a_att[sel, 1 : width + 1].bool()
        hs.append(rest[nxt])
        targets.append(a_ids[sel, 1 : width + 1][nxt])
        rows.append(sel[:, None].expand(-1, width)[nxt])
    return _row_scores(
        model, batch, torch.cat(hs), torch.cat(targets), torch.cat(rows), counts, copies
    )


def decoder_tokens(batch: TaskBatch, copies: int = 1, *, shared: bool | None = None) -> int:
    """Token positions (padding included) that the decoder runs for one scoring call.

    Full path: ``copies R T``. Shared path: ``copies B Tp`` plus, for each
    answer bucket, its rows times its width (answers of one token need none).
    ``shared=None`` counts the path the batch's layout asks for.
    """
    if shared is None:
        shared = batch.prefix_ids is not None
    if batch.kind != "choice" or not shared:
        return copies * batch.input_ids.numel()
    if batch.prefix_ids is None or batch.answer_mask is None:
        raise ScalaBLError("this batch has no shared-prefix layout; count it with shared=False")
    need = batch.answer_mask.sum(1).repeat(copies) - 1
    dev = batch.answer_mask.device.type
    call_cost = _CALL_COST_TOKENS.get(dev, _CALL_COST_TOKENS["other"])
    rest = sum(len(sel) * width for sel, width in _buckets(need, call_cost))
    return copies * batch.prefix_ids.numel() + rest
