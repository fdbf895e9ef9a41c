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
   (``Cache.batch_select_indices``, an index that autograd differentiates, so
   training gradients flow through the shared prefix): copies * R rows of
   Ta - 1 tokens, positions continuing from each prefix's length. The last
   answer token is never an input, so single-token answers (BoolQ's
   yes / no) need no second pass at all.

Tokens through the decoder: ``copies (B Tp + R (Ta - 1))`` instead of
``copies R T``; on ARC-Easy (C = 4, answers a few tokens long) that is about
a quarter of the prefix work.

Why a key/value cache and not packing the C answers after one prefix with a
4-D attention mask: the cache path is the one every Hugging Face decoder
implements and tests for generation (2-D padding mask, position ids, any
attention kernel: eager, SDPA, flash), while a custom 4-D mask is ignored by
flash attention and interpreted differently across models and library
versions. Packing would save the second decoder call; on a CPU the cost is
in the projections, which both variants run on the same number of tokens.

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
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from scalabl_pyro.adapters import HEAD_SITE, SubspaceLoRA
from scalabl_pyro.formats import TaskBatch
from scalabl_pyro.latents import Draws


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


def _answer_scores(
    model: nn.Module,
    batch: TaskBatch,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    predicts: torch.Tensor,
    copies: int,
) -> torch.Tensor:
    """Scores (copies*B, C) from hidden states (R', T, d) and the tokens they predict.

    ``predicts`` (R', T) marks the positions whose next token is an answer
    token ``targets`` (R', T); a row's score is the sum of those tokens'
    log-probabilities, divided by their count under ``normalization="mean"``.
    """
    h = hidden[predicts]  # (P, d): a 2-D matmul below, not a (R', T, V) one
    tgt = targets[predicts]
    logits = model.get_output_embeddings()(h).float()
    tok_lp = torch.log_softmax(logits, dim=-1).gather(-1, tgt[:, None])[:, 0]
    n_rows = hidden.shape[0]
    rows = torch.arange(n_rows, device=hidden.device)[:, None].expand_as(predicts)[predicts]
    row = torch.zeros(n_rows, dtype=tok_lp.dtype, device=tok_lp.device).index_add(0, rows, tok_lp)
    if batch.normalization == "mean":
        row = row / predicts.sum(dim=1).to(row.dtype)
    return _scatter_scores(batch, row, copies)


def _full_choice_scores(subspace: SubspaceLoRA, batch: TaskBatch, copies: int) -> torch.Tensor:
    """The full path: one decoder pass over every (question, choice) row."""
    model: nn.Module = subspace.peft_model
    ids, att, tmask = batch.tile_rows(copies)
    assert tmask is not None
    decoder = model.get_base_model().get_decoder()
    hidden = decoder(input_ids=ids, attention_mask=att).last_hidden_state  # (R', T, d)
    # position t predicts token t + 1
    return _answer_scores(model, batch, hidden[:, :-1], ids[:, 1:], tmask[:, 1:], copies)


def _cache_for(decoder: nn.Module) -> tuple[str, Any] | None:
    """(keyword, empty dynamic cache) for this decoder; None where the shared path cannot apply."""
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
    if not callable(getattr(cache, "batch_select_indices", None)):
        return None
    return key, cache


def _prefix_draws(
    subspace: SubspaceLoRA, batch: TaskBatch, copies: int, owner: torch.Tensor
) -> Draws | None:
    """The draws in scope for the copies*B prefix rows, or None if a question's rows disagree.

    Per-row draws come as (copies*R, r), one per answer row; ``owner``
    (copies*R,) is each answer row's prefix row. Shared draws (r,) pass as is.
    """
    b, r = batch.batch_size, batch.num_rows
    first = torch.full((b,), r, dtype=torch.long, device=owner.device).scatter_reduce(
        0, batch.row_example, torch.arange(r, device=owner.device), reduce="amin"
    )
    pick = (torch.arange(copies, device=owner.device)[:, None] * r + first[None]).reshape(-1)
    out = {}
    for name in subspace.site_names:
        v = subspace.current(name)
        if v.dim() == 2:
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
    decoder = model.get_base_model().get_decoder()
    made = _cache_for(decoder)
    if made is None:
        return None
    key, cache = made
    assert batch.prefix_mask is not None and batch.answer_ids is not None
    assert batch.answer_mask is not None
    b = batch.batch_size
    dev = batch.prefix_ids.device
    # owner[k * R + r] = k * B + row_example[r]: the prefix row of answer row r in copy k
    owner = (torch.arange(copies, device=dev)[:, None] * b + batch.row_example[None]).reshape(-1)
    draws = _prefix_draws(subspace, batch, copies, owner)
    if draws is None:
        return None
    p_ids = batch.prefix_ids.repeat(copies, 1)
    p_att = batch.prefix_mask.repeat(copies, 1)
    p_pos = (p_att.cumsum(1) - 1).clamp(min=0)
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
    # the last prefix position (left padding: the last column) predicts each first answer token
    hidden = out.last_hidden_state[:, -1][owner][:, None]  # (copies*R, 1, d)
    if a_ids.shape[1] > 1:
        cache.batch_select_indices(owner)
        c_ids, c_att = a_ids[:, :-1], a_att[:, :-1]
        c_pos = p_att.sum(1)[owner][:, None] + torch.arange(c_ids.shape[1], device=dev)
        rest = decoder(
            input_ids=c_ids,
            attention_mask=torch.cat([p_att[owner], c_att], dim=1),
            position_ids=c_pos,
            use_cache=True,
            **{key: cache},
        ).last_hidden_state  # (copies*R, Ta - 1, d): position t predicts answer token t + 1
        hidden = torch.cat([hidden, rest], dim=1)
    return _answer_scores(model, batch, hidden, a_ids, a_att.bool(), copies)
