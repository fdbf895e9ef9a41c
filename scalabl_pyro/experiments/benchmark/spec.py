"""The grid's vocabulary: method specs ``name[key=value,...][+ts]`` and :class:`BenchmarkConfig`.

:data:`METHODS` maps each base name to its :class:`~scalabl_pyro.config.ScalaBLConfig`
and :class:`~scalabl_pyro.inference.train.TrainConfig` overrides and its BMA sample
count; :func:`parse_method` resolves a spec against them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.methods import benchmark_entries

#: Base method -> (ScalaBLConfig overrides, TrainConfig overrides, BMA samples): each method
#: (and the official recipe) states its entries (``Method.benchmark`` in ``scalabl_pyro.methods``).
METHODS: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    name: entry for name, (entry, _) in benchmark_entries().items()
}


#: The OOD protocol's training set, in-distribution report set and shifted sets.
OOD_TRAIN = "openbookqa"


OOD_SHIFTED = ("arc_challenge", "arc_easy", "mmlu_college_chemistry", "mmlu_college_physics")


#: The far-OOD sets among :data:`OOD_SHIFTED` (ARC-Challenge and ARC-Easy are near OOD).
FAR_OOD = ("mmlu_college_chemistry", "mmlu_college_physics")

#: The near-OOD sets: the shifted sets that are not far OOD.
NEAR_OOD = tuple(s for s in OOD_SHIFTED if s not in FAR_OOD)


_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?:\[(?P<args>[^\]]*)\])?(?P<ts>\+ts)?$")


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method spec: base name, overrides, BMA samples, post-hoc TS."""

    spec: str
    name: str
    model: dict[str, Any]
    train: dict[str, Any]
    samples: int
    temperature: bool

    @property
    def trained(self) -> str:
        """The spec of the trained cell (without ``+ts``): TS reuses its predictions."""
        return self.spec[:-3] if self.temperature else self.spec


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_method(spec: str) -> MethodSpec:
    """Parse ``name[key=value,...][+ts]``; unknown names or fields are a one-line error."""
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.inference.train import TrainConfig

    m = _SPEC.match(spec.strip())
    if not m:
        raise ScalaBLError(
            f"method spec {spec!r} is malformed; write name[key=value,...] with an optional "
            "+ts, e.g. scalabl[kl_weight=10]+ts"
        )
    name = m["name"]
    if name not in METHODS:
        raise ScalaBLError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    model, train, samples = dict(METHODS[name][0]), dict(METHODS[name][1]), METHODS[name][2]
    model_fields = {f.name for f in dataclasses.fields(ScalaBLConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in filter(None, (m["args"] or "").split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ScalaBLError(f"method spec {spec!r}: {item!r} is not key=value")
        value = _coerce(raw.strip())
        if key == "samples":
            if not isinstance(value, int) or value < 1:
                raise ScalaBLError(f"method spec {spec!r}: samples must be an integer >= 1")
            samples = value
        elif key in model_fields:
            model[key] = value
        elif key in train_fields:
            train[key] = value
        else:
            raise ScalaBLError(
                f"method spec {spec!r}: {key!r} is neither a ScalaBLConfig nor a TrainConfig "
                "field (nor 'samples')"
            )
    if "recipe" in model:  # ScalaBLConfig/TrainConfig.official() refuse what contradicts it
        from scalabl_pyro.config import ScalaBLConfig

        del model["recipe"], train["recipe"]
        official = ScalaBLConfig.official(**model)  # checks the overrides
        fixed = (*ScalaBLConfig.OFFICIAL, "alpha", "target_modules")
        model = {**model, **{k: getattr(official, k) for k in fixed}}
        TrainConfig.official(**train)  # checks the overrides
        train = {**TrainConfig.OFFICIAL, **train}
    return MethodSpec(spec.strip(), name, model, train, samples, bool(m["ts"]))


@dataclass
class BenchmarkConfig:
    """One grid: what is trained, on what, how long, and where the cells go."""

    methods: Sequence[str]
    tasks: Sequence[str] = ("arc_easy",)
    seeds: Sequence[int] = (0,)
    protocol: str = "in_distribution"  # | "ood"
    output: str = "benchmark_output"
    model: str = "smollm2-135m"
    dtype: str = "auto"
    device: str = "auto"
    train_limit: int | None = 256
    steps: int = 256
    batch_size: int = 4
    lr: float = 1e-3
    select_limit: int | None = 200
    eval_limit: int | None = 500
    data_seed: int = 0
    eval_every: int = 0
    curve_limit: int = 100
    n_bins: int = 15
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in ("in_distribution", "ood"):
            raise ScalaBLError(
                f"unknown protocol {self.protocol!r}; use 'in_distribution' or 'ood'"
            )
        if not self.methods:
            raise ScalaBLError("no methods given; name at least one, e.g. --methods mle,scalabl")
        if not self.seeds:
            raise ScalaBLError("no seeds given; e.g. --seeds 0,1,2")
        self.specs = [parse_method(s) for s in self.methods]
        if self.protocol == "ood":
            self.tasks = (OOD_TRAIN,)

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change a cell's result; a re-run into the same folder must match."""
        keys = ("protocol", "model", "dtype", "train_limit", "steps", "batch_size", "lr")
        keys += ("select_limit", "eval_limit", "data_seed", "eval_every", "curve_limit")
        return {k: getattr(self, k) for k in keys}
