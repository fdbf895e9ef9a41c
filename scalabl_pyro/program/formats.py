"""Task formats: how a multiple-choice example becomes model inputs.

Two formats, one output type (:class:`TaskBatch`), whose class scores
``scoring.py`` reads off the model:

* :class:`LetterFormat` — the paper's format. The prompt lists the choices
  as ``A. ...``, ``B. ...`` and ends with ``Answer:``; the class scores are
  the next-token logits of the answer tokens (``" A"``, ``" B"`` ... or e.g.
  ``" True"``/``" False"``) at the last position. Optionally through the
  tokenizer's chat template. Each answer cue must be a single, distinct token.
* :class:`ChoiceFormat` — choice scoring, as evaluation harnesses do for ARC,
  OBQA and WinoGrande: the question followed by each answer text; a class
  score is the log-likelihood of that answer's tokens: summed
  (``normalization="sum"``), divided by the token count (``"mean"``), or by
  the answer text's UTF-8 bytes (``"byte"``, as evaluation harnesses'
  length-normalised accuracy does; for ASCII text that is per character, and
  unlike ``"mean"`` it does not depend on the tokenizer). Its batches also carry the
  question prefix once per example and the answers on their own, so that
  ``scoring.py`` can run each prefix once and score the C answers against its
  cached keys and values (``shared_prefix=False`` leaves them out).

Inputs are left-padded; too-long prompts are truncated from the left so that
the answer cue (and the answer text) survives, and the count is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

import torch
from transformers import PreTrainedTokenizerBase

from scalabl_pyro.data.examples import MCExample
from scalabl_pyro.errors import ScalaBLError

#: How the choice format turns an answer's token log-likelihoods into its class score.
Normalization = Literal["mean", "sum", "byte"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)

log = logging.getLogger(__name__)

LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")


@dataclass
class TaskBatch:
    """Tokenized examples plus what is needed to read class scores.

    ``input_ids``/``attention_mask`` have one row per example (letter format)
    or one row per (example, choice) pair (choice format). ``row_example`` and
    ``row_choice`` map rows to their (example, choice); ``class_mask`` marks
    the real choices of each example (examples may have fewer than ``C``).
    In the choice format, ``prefix_*`` and ``answer_*`` hold the same rows
    split into one shared prefix per example and the answers alone, right-
    padded: row ``r`` is ``prefix_ids[row_example[r]]`` followed by
    ``answer_ids[r]`` (their real tokens).
    """

    kind: Literal["letter", "choice"]
    input_ids: torch.Tensor  # (R, T) long
    attention_mask: torch.Tensor  # (R, T) long
    class_mask: torch.Tensor  # (B, C) bool
    labels: torch.Tensor  # (B,) long
    indices: torch.Tensor  # (B,) long: positions in the data set (for the data plate)
    row_example: torch.Tensor  # (R,) long
    row_choice: torch.Tensor  # (R,) long
    class_token_ids: torch.Tensor | None = None  # (C,) long, letter format
    target_mask: torch.Tensor | None = None  # (R, T) bool, choice format: answer tokens
    # choice format, shared-prefix layout (None where an example's choices see different prefixes)
    prefix_ids: torch.Tensor | None = None  # (B, Tp) long, left-padded question prefixes
    prefix_mask: torch.Tensor | None = None  # (B, Tp) long
    answer_ids: torch.Tensor | None = None  # (R, Ta) long, right-padded answer tokens
    answer_mask: torch.Tensor | None = None  # (R, Ta) long
    # choice format: UTF-8 bytes of each row's answer text, the divisor of normalization="byte"
    answer_bytes: torch.Tensor | None = None  # (R,) long
    normalization: str = "sum"
    num_truncated: int = 0

    @property
    def batch_size(self) -> int:
        """Number of examples B."""
        return int(self.labels.shape[0])

    @property
    def num_rows(self) -> int:
        """Number of model input rows R."""
        return int(self.input_ids.shape[0])

    @property
    def num_classes(self) -> int:
        """Width C of the class-score matrix."""
        return int(self.class_mask.shape[1])

    def to(self, device: torch.device | str) -> TaskBatch:
        """The same batch with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def tile_rows(self, copies: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Model inputs repeated ``copies`` times along the rows (sample folding)."""
        if copies == 1:
            return self.input_ids, self.attention_mask, self.target_mask
        tm = None if self.target_mask is None else self.target_mask.repeat(copies, 1)
        return self.input_ids.repeat(copies, 1), self.attention_mask.repeat(copies, 1), tm


def _left_pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def _right_pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _check_examples(examples: Sequence[MCExample]) -> None:
    if len(examples) == 0:
        raise ScalaBLError("empty batch of examples; pass at least one example")


class _BaseFormat:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        if max_length < 8:
            raise ScalaBLError(f"max_length={max_length} is too small; use at least 8 tokens")
        if tokenizer.pad_token_id is None:
            raise ScalaBLError(
                "the tokenizer has no pad token; load it with scalabl_pyro.load_base_model "
                "(which sets one) or set tokenizer.pad_token"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_classes = 0  # set by the subclass
        self.truncated_total = 0

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefix(self) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        add_bos = bool(getattr(self.tokenizer, "add_bos_token", False))
        return [bos] if (bos is not None and add_bos) else []

    def _class_mask(self, examples: Sequence[MCExample]) -> torch.Tensor:
        """(B, C) mask of each example's real choices; checks they fit the format."""
        _check_examples(examples)
        mask = torch.zeros((len(examples), self.num_classes), dtype=torch.bool)
        for i, ex in enumerate(examples):
            if len(ex.choices) > self.num_classes:
                raise ScalaBLError(
                    f"example {ex.id!r} has {len(ex.choices)} choices but the format was built "
                    f"for {self.num_classes}; build the format with the data set's num_classes"
                )
            mask[i, : len(ex.choices)] = True
        return mask

    def _report_truncation(self, n: int, total: int) -> None:
        """Warn at the first truncated batch only (a training run encodes one every step);
        later ones are logged at INFO (``-v``) and counted in ``truncated_total``."""
        if n:
            first = self.truncated_total == 0
            self.truncated_total += n
            log.log(
                logging.WARNING if first else logging.INFO,
                "%d of %d prompts were longer than max_length=%d and were truncated from the "
                "left (the answer cue is kept)%s",
                n,
                total,
                self.max_length,
                "; later truncations are logged at INFO level (-v)" if first else "",
            )


class LetterFormat(_BaseFormat):
    """The paper's lettered prompt; class scores are answer-token logits.

    ``answer_tokens`` defaults to letters; pass e.g. ``("False", "True")`` for
    BoolQ. With ``chat_template=True`` the prompt goes through the tokenizer's
    chat template as a user turn and the answer is read at the start of the
    assistant turn.
    """

    kind = "letter"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_classes: int,
        *,
        answer_tokens: Sequence[str] | None = None,
        chat_template: bool = False,
        max_length: int = 300,
    ) -> None:
        super().__init__(tokenizer, max_length)
        if answer_tokens is None:
            if num_classes > len(LETTERS):
                raise ScalaBLError(
                    f"{num_classes} classes but only {len(LETTERS)} answer letters; "
                    "pass answer_tokens explicitly"
                )
            answer_tokens = LETTERS[:num_classes]
        answer_tokens = tuple(answer_tokens)
        if len(answer_tokens) < num_classes:
            raise ScalaBLError(
                f"{len(answer_tokens)} answer tokens for {num_classes} classes; "
                "give one answer token per class"
            )
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise ScalaBLError(
                "chat_template=True but the tokenizer has no chat template; use chat_template=False"
            )
        self.answer_tokens = answer_tokens[:num_classes]
        self.chat_template = chat_template
        self.num_classes = num_classes
        self.class_token_ids = torch.tensor(
            [self._single_token(a) for a in self.answer_tokens], dtype=torch.long
        )
        if len(set(self.class_token_ids.tolist())) != num_classes:
            raise ScalaBLError(
                f"answer tokens {self.answer_tokens} do not map to distinct tokens for this "
                "tokenizer; choose other answer_tokens"
            )

    def _single_token(self, answer: str) -> int:
        # After "Answer:" a tokenizer usually has " A" as one token; at the start
        # of a chat assistant turn, "A" without the space.
        candidates = (answer, " " + answer) if self.chat_template else (" " + answer, answer)
        for cand in candidates:
            ids = self._encode(cand)
            if len(ids) == 1:
                self._space = cand.startswith(" ")
                return ids[0]
        raise ScalaBLError(
            f"answer string {answer!r} is not a single token for this tokenizer "
            f"({self._encode(' ' + answer)}); pick answer_tokens that are single tokens "
            "or use the choice-scoring format"
        )

    def prompt(self, ex: MCExample) -> str:
        """The prompt text for one example (without the answer)."""
        lines = [f"Question: {ex.question.strip()}"]
        if self.answer_tokens[: len(LETTERS)] == LETTERS[: self.num_classes]:
            lines.append("Choices:")
            lines += [f"{self.answer_tokens[i]}. {c}" for i, c in enumerate(ex.choices)]
        else:
            lines.append("Options: " + ", ".join(self.answer_tokens[: len(ex.choices)]))
        if self.chat_template:
            lines.append("Reply with the answer only.")
            messages = [{"role": "user", "content": "\n".join(lines)}]
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        lines.append("Answer:")
        return "\n".join(lines)

    def encode(
        self, examples: Sequence[MCExample], indices: Sequence[int] | None = None
    ) -> TaskBatch:
        """Tokenize a list of examples into a left-padded batch."""
        mask = self._class_mask(examples)
        seqs, truncated = [], 0
        for ex in examples:
            text = self.prompt(ex)
            ids = self._prefix() * (not self.chat_template) + self._encode(text)
            if len(ids) > self.max_length:
                ids = ids[-self.max_length :]
                truncated += 1
            seqs.append(ids)
        self._report_truncation(truncated, len(examples))
        ids, att = _left_pad(seqs, self.tokenizer.pad_token_id)
        b = len(examples)
        return TaskBatch(
            kind="letter",
            input_ids=ids,
            attention_mask=att,
            class_mask=mask,
            labels=torch.tensor([e.label for e in examples], dtype=torch.long),
            indices=torch.as_tensor(indices if indices is not None else range(b), dtype=torch.long),
            row_example=torch.arange(b),
            row_choice=torch.zeros(b, dtype=torch.long),
            class_token_ids=self.class_token_ids.clone(),
            num_truncated=truncated,
        )


class ChoiceFormat(_BaseFormat):
    """Choice scoring: a class score is the log-likelihood of the answer text.

    ``shared_prefix=True`` (the default) adds the shared-prefix layout to each
    batch, which lets the scorer run every question once instead of once per
    choice; ``False`` keeps only the one-row-per-choice layout (the reference
    path, e.g. for benchmarks). A batch in which truncation cut an example's
    prefix differently for different choices has no shared layout.
    """

    kind = "choice"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_classes: int,
        *,
        normalization: Normalization = "sum",
        max_length: int = 300,
        template: str = "Question: {question}\nAnswer:",
        shared_prefix: bool = True,
    ) -> None:
        super().__init__(tokenizer, max_length)
        if normalization not in NORMALIZATIONS:
            raise ScalaBLError(
                f"unknown normalization {normalization!r}; use one of {', '.join(NORMALIZATIONS)}"
            )
        if "{question}" not in template:
            raise ScalaBLError("the choice template must contain '{question}'")
        self.num_classes = num_classes
        self.normalization = normalization
        self.template = template
        self.shared_prefix = shared_prefix

    def encode(
        self, examples: Sequence[MCExample], indices: Sequence[int] | None = None
    ) -> TaskBatch:
        """One left-padded row per (example, choice): context then answer tokens."""
        mask = self._class_mask(examples)
        seqs, targets, row_ex, row_ch, nbytes, truncated = [], [], [], [], [], 0
        prefixes: list[list[int]] = []
        answers: list[list[int]] = []
        shared = self.shared_prefix
        for i, ex in enumerate(examples):
            context = self._prefix() + self._encode(
                self.template.format(question=ex.question.strip())
            )
            any_cut = False
            for j, choice in enumerate(ex.choices):
                text = " " + choice.strip()
                cont = self._encode(text)
                if not cont:
                    raise ScalaBLError(
                        f"example {ex.id!r} choice {j} is empty; every choice needs text"
                    )
                if len(cont) > self.max_length - 1:  # an over-long answer keeps its first tokens
                    cont = cont[: self.max_length - 1]
                    text = self.tokenizer.decode(cont)
                nbytes.append(max(len(text.encode("utf-8")), 1))
                room = self.max_length - len(cont)
                ctx = context[-room:] if len(context) > room else context
                any_cut |= len(ctx) < len(context)
                if j == 0:
                    prefixes.append(ctx)
                shared &= ctx == prefixes[-1] and len(ctx) > 0
                answers.append(cont)
                seqs.append(ctx + cont)
                targets.append(len(cont))
                row_ex.append(i)
                row_ch.append(j)
            truncated += int(any_cut)
        self._report_truncation(truncated, len(examples))
        ids, att = _left_pad(seqs, self.tokenizer.pad_token_id)
        tmask = torch.zeros_like(ids, dtype=torch.bool)
        for r, n in enumerate(targets):
            tmask[r, ids.shape[1] - n :] = True
        b = len(examples)
        layout: dict[str, torch.Tensor] = {}
        if shared:
            pad = self.tokenizer.pad_token_id
            layout["prefix_ids"], layout["prefix_mask"] = _left_pad(prefixes, pad)
            layout["answer_ids"], layout["answer_mask"] = _right_pad(answers, pad)
        return TaskBatch(
            kind="choice",
            input_ids=ids,
            attention_mask=att,
            class_mask=mask,
            labels=torch.tensor([e.label for e in examples], dtype=torch.long),
            indices=torch.as_tensor(indices if indices is not None else range(b), dtype=torch.long),
            row_example=torch.tensor(row_ex, dtype=torch.long),
            row_choice=torch.tensor(row_ch, dtype=torch.long),
            target_mask=tmask,
            answer_bytes=torch.tensor(nbytes, dtype=torch.long),
            normalization=self.normalization,
            num_truncated=truncated,
            **layout,
        )


TaskFormat = LetterFormat | ChoiceFormat


def make_format(
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    num_classes: int,
    *,
    max_length: int = 300,
    answer_tokens: Sequence[str] | None = None,
    chat_template: bool = False,
    normalization: Normalization = "sum",
) -> TaskFormat:
    """Build a task format by name: ``"letter"`` or ``"choice"``."""
    if kind == "letter":
        return LetterFormat(
            tokenizer,
            num_classes,
            answer_tokens=answer_tokens,
            chat_template=chat_template,
            max_length=max_length,
        )
    if kind == "choice":
        return ChoiceFormat(
            tokenizer, num_classes, normalization=normalization, max_length=max_length
        )
    raise ScalaBLError(f"unknown task format {kind!r}; use 'letter' or 'choice'")


def format_for(config, tokenizer: PreTrainedTokenizerBase, data=None) -> TaskFormat:
    """The task format a model config asks for (``ScalaBLConfig``: task_format, num_classes, ...).

    The letter format has the config's ``num_classes`` answer tokens (a data
    set with more choices is refused); choice scoring adapts to ``data``'s
    number of choices.
    """
    if config.task_format == "letter":
        if data is not None and data.num_classes > config.num_classes:
            raise ScalaBLError(
                f"{data.name} has up to {data.num_classes} choices but the model was built "
                f"for {config.num_classes}; set num_classes={data.num_classes}"
            )
        return make_format(
            "letter",
            tokenizer,
            config.num_classes,
            max_length=config.max_length,
            answer_tokens=config.answer_tokens,
            chat_template=config.chat_template,
        )
    return make_format(
        "choice",
        tokenizer,
        max(data.num_classes, 2),
        max_length=config.max_length,
        normalization=config.normalization,
    )
