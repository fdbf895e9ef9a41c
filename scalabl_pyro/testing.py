"""Tiny random models and an offline tokenizer, for tests and quick experiments.

Nothing here downloads: the tokenizer is a byte-level BPE trained in memory on
a small fixed corpus, and the models are built from a config with random
weights. They let the whole Pyro program run in milliseconds.
"""

from __future__ import annotations

from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from scalabl_pyro.utils.rng import seeded

_CORPUS = [
    "Question: Which of these is a mammal?\nAnswer: a whale",
    "Question: What makes plants green?\nAnswer: chlorophyll",
    "Answer: A\nAnswer: B\nAnswer: C\nAnswer: D\nAnswer: E",
    " A B C D E True False yes no",
    "The sun is a star. Water boils at one hundred degrees. Rocks are hard.",
    "Choices:\nA. red\nB. blue\nC. green\nD. yellow\nE. black",
]


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline; left padding, pad = eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    # Make every answer cue a single token, as in real LLM vocabularies.
    tok.add_tokens([" A", " B", " C", " D", " E", " True", " False", " yes", " no"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.padding_side = "left"
    return fast


def tiny_model(
    arch: str = "llama", vocab_size: int = 330, hidden: int = 64, layers: int = 2, seed: int = 0
) -> PreTrainedModel:
    """A randomly initialised causal LM (Llama- or Qwen2-style) with tiny dimensions."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use 'llama' or 'qwen2'")
    with seeded(seed):  # local seed: the caller's generators are untouched
        model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def tiny_model_and_tokenizer(arch: str = "llama", seed: int = 0):
    """A tiny model with a tokenizer whose vocabulary fits it, pad id wired up."""
    tok = tiny_tokenizer()
    model = tiny_model(arch, vocab_size=len(tok), seed=seed)
    model.config.pad_token_id = tok.pad_token_id
    return model, tok
