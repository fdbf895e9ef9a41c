"""What a comparison runs: :class:`CompareConfig`, the families that are whole recipes,
and the names of the files a comparison writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.families import check_family

#: Families that are a whole recipe, not only a guide: name -> (model, train) settings.
RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "official": (
        {"guide": "log_mean_field", "reference_prior_quirk": True},
        {"objective": "reference"},
    ),
}


DEFAULT_FAMILIES = ("mean_field", "full_rank", "low_rank", "block", "official")


RESULT_FILE = "result.json"


ARRAYS_FILE = "arrays.npz"


CHECKPOINT_DIR = "checkpoint"


TABLE_STEM = "guide_comparison"


#: Settings that do not change a cell's numbers (they may differ between runs).
_NOT_SETTINGS = ("families", "seeds", "output_dir", "progress", "save_checkpoints")


@dataclass
class CompareConfig:
    """Settings of a comparison. Defaults: the calibration study's overfitting regime.

    64 training questions for 160 steps of 4 (10 epochs), lr 1e-3 (``var_lr``
    None: the objective's default, 10 x lr for the ELBO), initial sigma and
    answer scores at the library defaults (0.4, per-token mean), 100
    selection / 200 report questions, BMA over 10 draws; k-hat and LOO from
    100 draws of q scored on every training question.
    """

    families: tuple[str, ...] = DEFAULT_FAMILIES
    seeds: tuple[int, ...] = (0,)
    base_model: str = "smollm2-135m"
    dtype: str = "auto"
    task: str = "arc_easy"
    train_limit: int | None = 64
    steps: int = 160
    batch_size: int = 4
    lr: float = 1e-3
    var_lr: float | None = None
    init_scale: float | None = None  # None: each family's default (0.4; 0.05 for official)
    normalization: str = "mean"
    prior_scale: float = 1.0
    rank: int = 8
    guide_rank: int = 4
    select_limit: int | None = 100
    eval_limit: int | None = 200
    data_seed: int = 0
    num_samples: int = 10
    diag_samples: int = 100
    exact_limit: int = 512
    subsample_size: int = 128
    output_dir: str = "guide_comparison"
    progress: bool = False
    save_checkpoints: bool = True

    def __post_init__(self) -> None:
        self.families = tuple(self.families)
        self.seeds = tuple(int(x) for x in self.seeds)
        if not self.families:
            raise ScalaBLError("no guide families to compare; name at least one")
        for f in self.families:
            if f not in RECIPES:
                check_family(f)
        if len(set(self.families)) != len(self.families):
            raise ScalaBLError(f"guide families repeat in {list(self.families)}; name each once")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ScalaBLError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        for name in ("steps", "num_samples", "diag_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ScalaBLError(f"{name} must be >= 1, got {getattr(self, name)}")
        from scalabl_pyro.diagnostics.importance import MIN_KHAT_SAMPLES

        if self.diag_samples < MIN_KHAT_SAMPLES:
            raise ScalaBLError(
                f"diag_samples must be >= {MIN_KHAT_SAMPLES} for k-hat and PSIS-LOO (PSIS fits "
                f"the largest 20 % of the weights), got {self.diag_samples}"
            )

    @classmethod
    def quick(cls, **overrides) -> CompareConfig:
        """A few-minute version (notebooks, smoke tests)."""
        base: dict[str, Any] = dict(
            train_limit=16,
            steps=8,
            select_limit=8,
            eval_limit=24,
            num_samples=4,
            diag_samples=25,
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        """JSON-serialisable settings."""
        d = asdict(self)
        d["families"], d["seeds"] = list(self.families), list(self.seeds)
        return d

    def settings(self) -> dict[str, Any]:
        """What a cell's numbers depend on (a finished cell must match these to be reused)."""
        return {k: v for k, v in self.to_dict().items() if k not in _NOT_SETTINGS}
