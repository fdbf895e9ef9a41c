"""Task formats: prompts, padding, truncation, answer tokens, and their class scores."""

from __future__ import annotations

import logging

import pytest
import torch

from scalabl_pyro.data.examples import MCExample
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.adapters import SubspaceLoRA
from scalabl_pyro.program.formats import ChoiceFormat, LetterFormat, make_format
from scalabl_pyro.program.scoring import class_scores
from scalabl_pyro.testing import tiny_model_and_tokenizer

EXAMPLES = [
    MCExample("q1", "Which of these is a mammal?", ("a whale", "a rock", "a star"), 0),
    MCExample("q2", "What makes plants green?", ("chlorophyll", "water"), 0),
]


@pytest.fixture()
def tiny():
    return tiny_model_and_tokenizer()


def test_letter_prompt_and_batch(tiny):
    _, tok = tiny
    fmt = LetterFormat(tok, 3)
    text = fmt.prompt(EXAMPLES[0])
    assert text.startswith("Question: Which of these is a mammal?")
    assert "A. a whale" in text and "C. a star" in text and text.endswith("Answer:")
    batch = fmt.encode(EXAMPLES, indices=[5, 9])
    assert batch.input_ids.shape[0] == 2
    assert batch.labels.tolist() == [0, 0]
    assert batch.indices.tolist() == [5, 9]
    assert batch.class_mask.tolist() == [[True, True, True], [True, True, False]]
    # left padding: the last column is real text for every row
    assert batch.attention_mask[:, -1].tolist() == [1, 1]
    assert batch.attention_mask[1, 0] == 0  # the shorter prompt is padded on the left
    assert batch.class_token_ids.tolist() == [
        tok.convert_tokens_to_ids(t) for t in (" A", " B", " C")
    ]


def test_choice_rows_and_target_mask(tiny):
    _, tok = tiny
    fmt = ChoiceFormat(tok, 3)
    batch = fmt.encode(EXAMPLES)
    assert batch.num_rows == 5  # 3 + 2 choices
    assert batch.row_example.tolist() == [0, 0, 0, 1, 1]
    assert batch.row_choice.tolist() == [0, 1, 2, 0, 1]
    # target tokens sit at the end of each row and decode to the answer text
    for r, choice in enumerate(["a whale", "a rock", "a star", "chlorophyll", "water"]):
        ids = batch.input_ids[r][batch.target_mask[r]]
        assert tok.decode(ids).strip() == choice


def test_choice_scores_are_answer_loglikelihoods(tiny):
    model, tok = tiny
    sub = SubspaceLoRA(model, rank=2)
    fmt = ChoiceFormat(tok, 3)
    batch = fmt.encode(EXAMPLES)
    with sub.use(sub.init_values), torch.no_grad():
        scores = class_scores(sub, batch)
        assert scores.shape == (2, 3)
        assert torch.isinf(scores[1, 2]) and scores[1, 2] < 0  # absent third choice
        # exact: sum of log p(answer token | prefix) from a plain full forward pass
        for r in range(batch.num_rows):
            ids = batch.input_ids[r : r + 1]
            att = batch.attention_mask[r : r + 1]
            logp = torch.log_softmax(
                sub.peft_model(input_ids=ids, attention_mask=att).logits.float(), -1
            )
            pos = torch.nonzero(batch.target_mask[r]).flatten()
            want = sum(logp[0, p - 1, ids[0, p]] for p in pos.tolist())
            got = scores[batch.row_example[r], batch.row_choice[r]]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_mean_normalization_divides_by_token_count(tiny):
    model, tok = tiny
    sub = SubspaceLoRA(model, rank=2)
    b_sum = ChoiceFormat(tok, 3).encode(EXAMPLES[:1])
    b_mean = ChoiceFormat(tok, 3, normalization="mean").encode(EXAMPLES[:1])
    with sub.use(sub.init_values), torch.no_grad():
        s_sum, s_mean = class_scores(sub, b_sum), class_scores(sub, b_mean)
    counts = b_sum.target_mask.sum(1).float()
    torch.testing.assert_close(s_mean[0], s_sum[0] / counts)


def test_byte_normalization_divides_by_the_answer_texts_bytes(tiny):
    """Per byte, as harnesses' length-normalised accuracy: the answer text with its leading
    space, in UTF-8 (a non-ASCII answer counts its multi-byte characters by their bytes)."""
    model, tok = tiny
    sub = SubspaceLoRA(model, rank=2)
    examples = [*EXAMPLES[:1], MCExample("u", "Which is hot?", ("café crème", "ice"), 0)]
    b_sum = ChoiceFormat(tok, 3).encode(examples)
    b_byte = ChoiceFormat(tok, 3, normalization="byte").encode(examples)
    want_bytes = [len((" " + c.strip()).encode("utf-8")) for ex in examples for c in ex.choices]
    assert b_byte.answer_bytes.tolist() == want_bytes
    assert want_bytes[-2] == len(" café crème") + 2  # two two-byte characters
    with sub.use(sub.init_values), torch.no_grad():
        s_sum, s_byte = class_scores(sub, b_sum), class_scores(sub, b_byte)
    per_row = s_sum[b_sum.row_example, b_sum.row_choice] / torch.tensor(want_bytes).float()
    torch.testing.assert_close(s_byte[b_byte.row_example, b_byte.row_choice], per_row)
    with pytest.raises(ScalaBLError, match="normalization 'chars'; use one of mean, sum, byte"):
        ChoiceFormat(tok, 3, normalization="chars")


def test_letter_scores_match_full_logits(tiny):
    model, tok = tiny
    sub = SubspaceLoRA(model, rank=2)
    fmt = LetterFormat(tok, 3)
    batch = fmt.encode(EXAMPLES)
    with sub.use(sub.init_values), torch.no_grad():
        scores = class_scores(sub, batch)
        logits = sub.peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits
    want = logits[:, -1, batch.class_token_ids].float()
    torch.testing.assert_close(scores[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores[1, :2], want[1, :2], atol=1e-5, rtol=1e-5)
    assert torch.isinf(scores[1, 2])


def test_truncation_keeps_answer_cue_and_reports(tiny, caplog):
    _, tok = tiny
    long = MCExample("long", "The sun is a star. " * 80 + "Which?", ("a whale", "a rock"), 1)
    fmt = LetterFormat(tok, 2, max_length=40)
    with caplog.at_level(logging.WARNING):
        batch = fmt.encode([long, EXAMPLES[1]])
    assert batch.num_truncated == 1 and batch.input_ids.shape[1] == 40
    assert tok.decode(batch.input_ids[0]).endswith("Answer:")
    assert "1 of 2 prompts were longer than max_length=40" in caplog.text
    cfmt = ChoiceFormat(tok, 2, max_length=40)
    cb = cfmt.encode([long])
    assert cb.num_truncated == 1 and cb.input_ids.shape[1] <= 40
    assert tok.decode(cb.input_ids[1][cb.target_mask[1]]).strip() == "a rock"


def test_answer_tokens_must_be_single_and_distinct(tiny):
    _, tok = tiny
    with pytest.raises(ScalaBLError, match="not a single token"):
        LetterFormat(tok, 2, answer_tokens=("mammal", "whale"))
    fmt = LetterFormat(tok, 2, answer_tokens=("False", "True"))
    assert fmt.class_token_ids.tolist() == [
        tok.convert_tokens_to_ids(" False"),
        tok.convert_tokens_to_ids(" True"),
    ]


def test_format_errors_are_one_line(tiny):
    _, tok = tiny
    with pytest.raises(ScalaBLError, match="unknown task format"):
        make_format("cloze", tok, 2)
    with pytest.raises(ScalaBLError, match="num_classes"):
        LetterFormat(tok, 2).encode(EXAMPLES[:1])  # 3 choices > 2 classes
    with pytest.raises(ScalaBLError, match="empty batch"):
        ChoiceFormat(tok, 2).encode([])
    with pytest.raises(ScalaBLError, match="chat template"):
        LetterFormat(tok, 2, chat_template=True)
    with pytest.raises(ScalaBLError) as e:
        MCExample("x", "q", ("a", "b"), 3)
    assert "\n" not in str(e.value) and "label 3" in str(e.value)


def test_batch_to_and_tile(tiny):
    _, tok = tiny
    batch = ChoiceFormat(tok, 3).encode(EXAMPLES).to("cpu")
    ids, att, tm = batch.tile_rows(3)
    assert ids.shape[0] == 3 * batch.num_rows and tm.shape == ids.shape
    assert torch.equal(ids[: batch.num_rows], ids[batch.num_rows : 2 * batch.num_rows])


def test_default_scoring_is_not_decided_by_answer_length(tiny):
    """The library default (per-token mean) keeps zero-shot choices near even on a random model.

    Summed scores add one token's log-likelihood per token, so before any
    training a long answer loses by about (length difference) x log V nats: the
    prediction is certain and decided by length, the over-confidence that the
    calibration study (docs/calibration.md) traced to this choice.
    """
    from scalabl_pyro.config import ScalaBLConfig

    model, tok = tiny
    assert ScalaBLConfig().normalization == "mean"
    sub = SubspaceLoRA(model, rank=2)
    long = " ".join(["a very long answer about the colour of the sky"] * 3)
    ex = [MCExample("q", "What colour is the sky?", ("blue", long), 0)]
    probs = {}
    for norm in ("sum", "mean"):
        batch = ChoiceFormat(tok, 2, normalization=norm).encode(ex)
        with sub.use(sub.init_values), torch.no_grad():
            probs[norm] = torch.softmax(class_scores(sub, batch)[0].double(), -1)
    assert probs["sum"][0] > 1 - 1e-6  # the short answer wins by length alone
    assert 0.2 < probs["mean"][0] < 0.8, probs["mean"]


def test_a_config_saved_before_the_mean_default_keeps_summed_scores():
    from scalabl_pyro.config import ScalaBLConfig

    saved = ScalaBLConfig(normalization="sum").to_dict()
    assert ScalaBLConfig.from_dict(saved).normalization == "sum"
    del saved["normalization"]  # written before the field's default changed
    assert ScalaBLConfig.from_dict(saved).normalization == "sum"
    assert ScalaBLConfig.from_dict(ScalaBLConfig().to_dict()).normalization == "mean"


def test_initial_scale_is_resolved_per_method_and_saved_with_the_run():
    """0.4 for the library's Gaussian guides; the official recipe's and BLoB's 0.05 kept."""
    from dataclasses import replace

    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.errors import ScalaBLError

    cfg = ScalaBLConfig()
    assert cfg.init_scale is None and cfg.initial_scale == 0.4
    for guide in ("full_rank", "low_rank", "block"):
        assert ScalaBLConfig(guide=guide).initial_scale == 0.4
    assert ScalaBLConfig(guide="log_mean_field").initial_scale == 0.05  # the official draw
    assert replace(cfg, method="blob").initial_scale == 0.05  # unresolved field: new default
    assert not ScalaBLConfig(method="mle").uses_init_scale
    assert not ScalaBLConfig(method="laplace").uses_init_scale
    assert ScalaBLConfig(init_scale=0.2, guide="log_mean_field").initial_scale == 0.2
    # a saved run records the value it started from, so a later default cannot change it
    assert cfg.to_dict()["init_scale"] == 0.4
    assert ScalaBLConfig.from_dict(ScalaBLConfig(init_scale=0.05).to_dict()).initial_scale == 0.05
    with pytest.raises(ScalaBLError, match="init_scale must be > 0"):
        ScalaBLConfig(init_scale=0.0)
