"""The normalized multiple-choice example that every data source produces."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from scalabl_pyro.errors import ScalaBLError


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice question.

    ``question`` is the full prompt stem (for BoolQ: passage and question; for
    WinoGrande: the sentence with the blank), ``choices`` the answer texts and
    ``label`` the index of the correct one.
    """

    id: str
    question: str
    choices: tuple[str, ...]
    label: int

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise ScalaBLError(
                f"example {self.id!r} has {len(self.choices)} choice(s); "
                "a multiple-choice example needs at least 2"
            )
        if not 0 <= self.label < len(self.choices):
            raise ScalaBLError(
                f"example {self.id!r} has label {self.label} outside its "
                f"{len(self.choices)} choices; labels are 0-based indices into choices"
            )


@dataclass
class MCDataset(Sequence[MCExample]):
    """A named split of examples (a thin list with a name and split label).

    ``answer_tokens`` optionally names the answer word for each choice position
    in the lettered prompt format (``("False", "True")`` for BoolQ); ``None``
    means the letters A, B, C, ...
    """

    name: str
    split: str
    examples: list[MCExample] = field(default_factory=list)
    answer_tokens: tuple[str, ...] | None = None
    #: How the examples were chosen (set by :func:`load_task` and :meth:`subset`): what the
    #: data set was loaded as (a key, or a local file's path as given), its source, and the
    #: random subset taken. Part of :meth:`identity`; not compared by ``==``.
    origin: str | None = field(default=None, compare=False)
    source: str | None = field(default=None, compare=False)
    limit: int | None = field(default=None, compare=False)
    subset_seed: int | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return replace(self, examples=self.examples[i])
        return self.examples[i]

    def __iter__(self) -> Iterator[MCExample]:
        return iter(self.examples)

    @property
    def num_classes(self) -> int:
        """Largest number of choices of any example (the width of class scores)."""
        return max((len(e.choices) for e in self.examples), default=0)

    def subset(self, n: int | None, seed: int = 0) -> MCDataset:
        """First-``n`` random subset with a fixed seed (all examples if ``n`` is None)."""
        if n is None:
            return self
        if n >= len(self.examples):
            return replace(self, limit=n, subset_seed=seed)
        import random

        rng = random.Random(seed)
        idx = sorted(rng.sample(range(len(self.examples)), n))
        return replace(self, examples=[self.examples[i] for i in idx], limit=n, subset_seed=seed)

    def fingerprint(self) -> str:
        """sha256 of the examples and answer tokens as canonical JSON (same examples, same hash)."""
        import hashlib
        import json

        rows = [[e.id, e.question, list(e.choices), e.label] for e in self.examples]
        payload = {"examples": rows, "answer_tokens": self.answer_tokens}
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def identity(self) -> dict:
        """What a training run saves about its training set, to resume on the same one."""
        return {
            "name": self.name,
            "split": self.split,
            "origin": self.origin,
            "source": self.source,
            "limit": self.limit,
            "subset_seed": self.subset_seed,
            "num_examples": len(self.examples),
            "sha256": self.fingerprint(),
        }
