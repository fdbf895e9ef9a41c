"""The model-side configuration (what a checkpoint needs to rebuild the model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.guides import check_family
from scalabl_pyro.loading import check_quantization


@dataclass
class ScalaBLConfig:
    """Everything that defines a ScalaBL model (training settings live in TrainConfig).

    Defaults follow the paper: rank 8, alpha 16, no LoRA dropout, q_proj and
    v_proj targets (add ``"lm_head"`` for the answer-token head, letter format
    only), prior N(0, 1), mean-field guide with initial scale 0.05. The
    official code's exact setup is ``guide="log_mean_field"`` (positive mean,
    log parameters, initial scales ~ U[0.05/sqrt 2, 0.05]) with
    ``TrainConfig(objective="reference")``; ``reference_prior_quirk=True``
    adds its accidental prior ``N(u, (1 + u)^2)`` (see ``docs/method.md``).
    ``quantization="4bit"`` or ``"8bit"`` loads the frozen base through
    bitsandbytes, QLoRA style (``docs/scaling.md``); the LoRA factors and the
    guide stay in floating point.
    """

    base_model: str = "smollm2-135m"
    task_format: str = "choice"  # "choice" (log-likelihood of answer texts) | "letter"
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    prior_scale: float | None = 1.0
    guide: str = "mean_field"
    guide_rank: int = 4  # rank k of the low_rank family
    init_scale: float = 0.05
    reference_prior_quirk: bool = False  # the official code's N(u, (1 + u)^2) prior, see adapters
    num_classes: int = 5  # letter format: number of answer tokens
    answer_tokens: tuple[str, ...] | None = None
    chat_template: bool = False
    normalization: str = "sum"  # choice format: "sum" | "mean"
    max_length: int = 300
    dtype: str = "auto"
    device: str = "auto"
    quantization: str | None = None  # None | "4bit" | "8bit": a frozen bitsandbytes base
    trust_remote_code: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_family(self.guide)
        check_quantization(self.quantization)
        if self.task_format not in ("choice", "letter"):
            raise ScalaBLError(
                f"unknown task format {self.task_format!r}; use 'choice' or 'letter'"
            )
        self.target_modules = tuple(self.target_modules)
        if self.answer_tokens is not None:
            self.answer_tokens = tuple(self.answer_tokens)
        if self.reference_prior_quirk and self.prior_scale is None:
            raise ScalaBLError("reference_prior_quirk needs a prior; set prior_scale > 0")
        if not self.init_scale > 0:
            raise ScalaBLError(f"init_scale must be > 0, got {self.init_scale}")
        if self.guide == "mle":
            self.prior_scale = None
        elif self.prior_scale is None:
            raise ScalaBLError(
                f"guide {self.guide!r} needs a prior; set prior_scale > 0 (None is for 'mle')"
            )
        if "lm_head" in self.target_modules and self.task_format != "letter":
            raise ScalaBLError(
                "lm_head adaptation is restricted to the answer-token rows and needs the "
                "letter format; drop lm_head from target_modules or use task_format='letter'"
            )

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        if self.answer_tokens is not None:
            d["answer_tokens"] = list(self.answer_tokens)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ScalaBLConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ScalaBLError(
                f"unknown config keys {unknown}; this checkpoint was written by a newer "
                "scalabl-pyro, upgrade it"
            )
        return cls(**d)
