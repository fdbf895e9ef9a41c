"""Class scores from a (subspace-LoRA) language model for a :class:`TaskBatch`.

* Letter format: the decoder's last-position hidden state times the output
  head's rows for the answer tokens (plus the subspace head delta if
  ``lm_head`` is adapted). No full-vocabulary logits are computed.
* Choice format: one forward pass over all (question, choice) rows; only the
  last ``K + 1`` positions' logits are kept (``logits_to_keep``), since with
  left padding every answer token lies there; a class score is the summed (or
  mean) log-probability of the answer tokens, in float32.

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
    """Class scores (copies * B, C) for the latents currently set on ``subspace``."""
    model: nn.Module = subspace.peft_model
    ids, att, tmask = batch.tile_rows(copies)
    if batch.kind == "letter":
        decoder = model.get_base_model().get_decoder()
        hidden = decoder(input_ids=ids, attention_mask=att).last_hidden_state[:, -1]
        if subspace.head is not None:
            logits = subspace.head(hidden, subspace.latent(HEAD_SITE))
        else:
            head = model.get_output_embeddings().weight[batch.class_token_ids]
            logits = hidden @ head.T
        logits = logits.float()
        mask = batch.class_mask.repeat(copies, 1)
        return logits.masked_fill(~mask, float("-inf"))
    # choice scoring
    assert tmask is not None
    k = int(tmask.sum(dim=1).max())
    out = model(input_ids=ids, attention_mask=att, logits_to_keep=k + 1)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # predicts the last k tokens
    targets = ids[:, -k:]
    tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    m = tmask[:, -k:].to(tok_lp.dtype)
    row = (tok_lp * m).sum(dim=1)
    if batch.normalization == "mean":
        row = row / m.sum(dim=1)
    return _scatter_scores(batch, row, copies)
