"""The model-side configuration (what a checkpoint needs to rebuild the model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.io.quantization import check_quantization
from scalabl_pyro.methods import Method, get_method
from scalabl_pyro.methods.base import DEFAULT_INIT_SCALE, REFERENCE_INIT_SCALE
from scalabl_pyro.methods.official import RECIPE as OFFICIAL_RECIPE
from scalabl_pyro.program.families import check_family

LAPLACE_HESSIANS = ("ggn", "exact")
# DEFAULT_INIT_SCALE (0.4) was chosen on validation in the overfitting regime of
# ``docs/calibration.md``: Adam moves log sigma by about ``var_lr`` per step, so a short
# run cannot widen a posterior that starts at 0.05 (REFERENCE_INIT_SCALE, the official code's).
__all__ = ["DEFAULT_INIT_SCALE", "LAPLACE_HESSIANS", "REFERENCE_INIT_SCALE", "ScalaBLConfig"]


@dataclass
class ScalaBLConfig:
    """Everything that defines a ScalaBL model (training settings live in TrainConfig).

    Defaults follow the paper: rank 8, alpha 16, no LoRA dropout, q_proj and
    v_proj targets (add ``"lm_head"`` for the answer-token head, letter format
    only), prior N(0, 1), mean-field guide. The guide's initial std of ``s`` is
    0.4, not the paper's 0.05: in the overfitting regime of ``docs/calibration.md``
    a posterior started at 0.05 stays too narrow to calibrate (validation picked
    0.4 over 3 seeds on ARC-Easy). The
    official code's exact setup is ``guide="log_mean_field"`` (positive mean,
    log parameters, initial scales ~ U[0.05/sqrt 2, 0.05]) with
    ``TrainConfig(objective="reference", lr=1e-4)``; ``reference_prior_quirk=True``
    adds its accidental prior ``N(u, (1 + u)^2)`` (see ``docs/method.md``).
    :meth:`official` (with ``TrainConfig.official``) sets the whole recipe.
    ``quantization="4bit"`` or ``"8bit"`` loads the frozen base through
    bitsandbytes, QLoRA style (``docs/scaling.md``); the LoRA factors and the
    guide stay in floating point.

    ``normalization`` is how the choice format turns an answer's token
    log-likelihoods into its class score: ``"mean"`` (the default) per token,
    ``"sum"`` the total, ``"byte"`` per UTF-8 byte of the answer text. Summed
    scores differ by many nats between answers of different lengths before any
    training; in the overfitting regime of
    ``docs/calibration.md`` the validation split picked ``"mean"`` for ScalaBL
    (ECE 18 % -> 11 %, NLL 1.32 -> 0.92 at equal accuracy) and for MLE LoRA.

    ``method`` picks ScalaBL or one of the paper's baselines (``docs/baselines.md``):
    ``guide`` and ``guide_rank`` apply to ``"scalabl"`` only (the others set
    ``guide`` to the family they imply: ``mle`` for mle/map/mc_dropout/ensemble,
    ``mean_field`` for blob, ``full_rank`` for laplace); ``prior_scale`` is the
    prior of ``s`` (scalabl, laplace); ``lora_prior_scale`` the prior std of
    LoRA-factor entries (map: on ``B`` and ``diag(s) A``; blob: on ``A``, 0.2
    as in BLoB); ``dropout`` defaults to 0.1 for mc_dropout and 0 otherwise;
    ``ensemble_size`` is K; ``laplace_hessian`` / ``laplace_max_examples``
    choose the Laplace curvature (GGN or exact) and its data (all by default).
    """

    method: str = "scalabl"

    base_model: str = "smollm2-135m"
    task_format: str = "choice"  # "choice" (log-likelihood of answer texts) | "letter"
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    rank: int = 8
    alpha: float = 16.0
    dropout: float | None = None  # None: 0.1 for mc_dropout, 0 otherwise
    prior_scale: float | None = 1.0
    guide: str = "mean_field"
    guide_rank: int = 4  # rank k of the low_rank family
    init_scale: float | None = None  # None: 0.4, or 0.05 for log_mean_field and blob
    reference_prior_quirk: bool = False  # the official code's N(u, (1 + u)^2) prior, see adapters
    num_classes: int = 5  # letter format: number of answer tokens
    answer_tokens: tuple[str, ...] | None = None
    chat_template: bool = False
    normalization: str = "mean"  # choice format: "mean" | "sum" | "byte" (see the docstring)
    max_length: int = 300
    dtype: str = "auto"
    device: str = "auto"
    quantization: str | None = None  # None | "4bit" | "8bit": a frozen bitsandbytes base
    trust_remote_code: bool = False
    seed: int = 0
    ensemble_size: int = 5
    lora_prior_scale: float = 0.2
    laplace_hessian: str = "ggn"
    laplace_max_examples: int | None = None

    #: What :meth:`official` fixes (an override with another value is refused);
    #: the recipe lives in ``methods/official.py``.
    OFFICIAL: ClassVar[dict[str, Any]] = OFFICIAL_RECIPE.model

    @classmethod
    def official(cls, **overrides: Any) -> ScalaBLConfig:
        """The official ScalaBL code's model setup (``docs/method.md``, "The official recipe").

        ``guide="log_mean_field"`` (positive mean, log parameters, initial
        sigma ~ U[0.05/sqrt 2, 0.05]), its accidental prior ``N(u, (1 + u)^2)``
        (``reference_prior_quirk``), ``alpha = 2 x rank``, no LoRA dropout, and
        ``lm_head`` adapted with ``q_proj`` and ``v_proj``, which needs the
        answer-letter format. ``rank``, ``base_model``, ``seed`` and the other
        fields may be set (``alpha`` follows ``rank``); ``target_modules`` must
        keep ``lm_head``; a value that contradicts the recipe is refused.
        Train it with ``TrainConfig.official()``.
        """
        clash = sorted(k for k, v in overrides.items() if cls.OFFICIAL.get(k, v) != v)
        rank = overrides.get("rank", 8)
        if overrides.get("alpha", 2 * rank) != 2 * rank:
            clash.append("alpha")
        targets = tuple(overrides.get("target_modules", OFFICIAL_RECIPE.target_modules))
        if "lm_head" not in targets:
            clash.append("target_modules")
        if clash:
            fixed = {**cls.OFFICIAL, "alpha": 2 * rank, "target_modules": "... with lm_head"}
            sets = ", ".join(f"{k}={fixed[k]!r}" for k in clash)
            raise ScalaBLError(
                f"ScalaBLConfig.official() sets {sets} itself; drop {', '.join(clash)} "
                "or build ScalaBLConfig(...) directly"
            )
        return cls(**{**cls.OFFICIAL, **overrides, "alpha": 2.0 * rank, "target_modules": targets})

    def __post_init__(self) -> None:
        check_family(self.guide)
        check_quantization(self.quantization)
        self._resolve_method()
        if self.task_format not in ("choice", "letter"):
            raise ScalaBLError(
                f"unknown task format {self.task_format!r}; use 'choice' or 'letter'"
            )
        self.target_modules = tuple(self.target_modules)
        if self.answer_tokens is not None:
            self.answer_tokens = tuple(self.answer_tokens)
        if self.reference_prior_quirk and self.prior_scale is None:
            raise ScalaBLError("reference_prior_quirk needs a prior; set prior_scale > 0")
        if self.init_scale is not None and not self.init_scale > 0:
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

    @property
    def method_object(self) -> Method:
        """The registered method (:func:`scalabl_pyro.methods.get_method`) that ``method`` names."""
        return get_method(self.method)

    def _resolve_method(self) -> None:
        """Validate the method's own settings and set the guide family it implies."""
        method = get_method(self.method)  # the one-line error naming the methods
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ScalaBLError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.lora_prior_scale > 0:
            raise ScalaBLError(f"lora_prior_scale must be > 0, got {self.lora_prior_scale}")
        if self.laplace_hessian not in LAPLACE_HESSIANS:
            raise ScalaBLError(
                f"unknown laplace_hessian {self.laplace_hessian!r}; use 'ggn' or 'exact'"
            )
        if self.laplace_max_examples is not None and self.laplace_max_examples < 1:
            raise ScalaBLError(
                f"laplace_max_examples must be >= 1 or None, got {self.laplace_max_examples}"
            )
        self.guide = method.resolve_guide(self.guide)
        method.check_config(self)

    @property
    def lora_dropout(self) -> float:
        """The LoRA dropout p: ``dropout``, else the method's default (0.1 for mc_dropout, 0).

        Kept unresolved in the field, so ``replace(config, method="mc_dropout")``
        gets the method's default.
        """
        if self.dropout is not None:
            return float(self.dropout)
        return get_method(self.method).default_dropout

    @property
    def initial_scale(self) -> float:
        """The posterior's initial std of ``s``: ``init_scale``, else the method's default.

        0.4 for the library's Gaussian guides (``docs/calibration.md``); 0.05 for
        ``log_mean_field`` (the official recipe) and BLoB. Kept unresolved in the
        field, like ``dropout``, so ``replace`` gets the new method's default.
        """
        if self.init_scale is not None:
            return float(self.init_scale)
        return get_method(self.method).default_init_scale(self.guide)

    @property
    def uses_init_scale(self) -> bool:
        """Whether training starts from a Gaussian whose std is :attr:`initial_scale`."""
        # a Gaussian over s trained from a start (Laplace's comes from the MAP), or BLoB's over A
        return get_method(self.method).uses_init_scale(self.guide)

    def to_dict(self) -> dict:
        """JSON-serialisable form; ``init_scale`` resolved, so a saved run keeps its own."""
        d = asdict(self)
        d["init_scale"] = self.initial_scale
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
        # a config saved without the key predates the "mean" default: it scored with the sum
        return cls(**{"normalization": "sum", **d})
