"""Class scores from a (subspace-LoRA) language model for a :class:`TaskBatch`.

* Letter format: the decoder's last-position hidden state times the output
  head's rows for the answer tokens (plus the subspace head delta if
  ``lm_head`` is adapted). No full-vocabulary logits are computed.
* Choice format: one decoder pass over all (question, choice) rows; the output
  head is applied only to the hidden states that predict answer tokens (a 2-D
  matmul of P x d by d x V), and a class score is the summed (or mean)
  log-probability of the answer tokens, in float32.

``copies`` folds several posterior samples into the batch: the inputs are
tiled ``copies`` times and the result has shape (copies * B, C).
"""

from __future__ import annotations

import torch
from torch import nn

from scalabl_pyro.adapters import HEAD_SITE, SubspaceLoRA
from scalabl_pyro.formats import TaskBatch


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
    ids, att, tmask = batch.tile_rows(copies)
    if batch.kind == "letter":
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
    # choice scoring: hidden states only at the positions that predict answer tokens
    assert tmask is not None
    decoder = model.get_base_model().get_decoder()
    hidden = decoder(input_ids=ids, attention_mask=att).last_hidden_state  # (R', T, d)
    predicts = tmask[:, 1:]  # position t predicts token t + 1
    h = hidden[:, :-1][predicts]  # (P, d): a 2-D matmul below, not a (R', T, V) one
    targets = ids[:, 1:][predicts]
    logits = model.get_output_embeddings()(h).float()
    tok_lp = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(predicts)[predicts]
    row = torch.zeros(ids.shape[0], dtype=tok_lp.dtype, device=tok_lp.device).index_add(
        0, rows, tok_lp
    )
    if batch.normalization == "mean":
        row = row / tmask.sum(dim=1).to(row.dtype)
    return _scatter_scores(batch, row, copies)
