"""The method registry: every registered method builds, trains, predicts and round-trips.

Methods are found by the registry (``scalabl_pyro.methods``), so a new method
module is covered here without editing this file.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
from scalabl_testutils import make_scalabl, toy_dataset

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.train import TrainConfig
from scalabl_pyro.methods import (
    DETERMINISTIC_METHODS,
    METHODS,
    POINT_S_METHODS,
    Method,
    benchmark_entries,
    get_method,
    get_recipe,
    method_names,
)
from scalabl_pyro.program.objectives import (
    OBJECTIVES,
    ELBOObjective,
    ReferenceObjective,
    get_objective,
)
from scalabl_pyro.testing import tiny_model_and_tokenizer

#: What the paper's table lists, in its order (docs/baselines.md).
DOCUMENTED = ("scalabl", "mle", "map", "mc_dropout", "ensemble", "blob", "laplace")
#: Parameters beyond plain LoRA where they are known to be 0.
NO_EXTRA = {"mle", "map", "mc_dropout"}


def _cfg(**kw) -> TrainConfig:
    kw.setdefault("steps", 2)
    kw.setdefault("batch_size", 4)
    kw.setdefault("lr", 1e-2)
    return TrainConfig(progress=False, **kw)


# ---------------------------------------------------------------- registry


def test_the_registry_holds_every_documented_method_in_order():
    assert method_names() == DOCUMENTED == METHODS
    for name in method_names():
        method = get_method(name)
        assert isinstance(method, Method) and method.name == name and method.summary
    assert POINT_S_METHODS == ("mle", "map", "mc_dropout", "ensemble")
    assert DETERMINISTIC_METHODS == ("mle", "map")
    with pytest.raises(ScalaBLError, match="unknown method 'swag'; choose one of scalabl"):
        get_method("swag")


def test_official_is_scalabl_with_the_reference_objective():
    recipe = get_recipe("official")
    assert recipe.model["method"] == "scalabl" and recipe.objective == "reference"
    assert ScalaBLConfig.OFFICIAL is recipe.model
    assert ScalaBLConfig.official().method == "scalabl"
    assert TrainConfig.official().objective == recipe.objective
    assert TrainConfig.official().lr == TrainConfig.OFFICIAL_LR == recipe.lr  # one value
    assert "official" not in method_names()
    entries = benchmark_entries()
    assert entries["official"][1] is recipe
    assert {n for n in entries if entries[n][1] is get_method("scalabl")} == {
        "scalabl",
        "full_rank",
        "low_rank",
        "block",
        "reference",
    }
    assert set(method_names()) - {"scalabl"} <= set(entries)


def test_reading_the_registry_imports_no_torch():
    code = (
        "import sys\nfrom scalabl_pyro.methods import get_method, method_names\n"
        "for n in method_names():\n    m = get_method(n); m.gaussian_over_s('mean_field')\n"
        "print(','.join(k for k in ('torch', 'pyro', 'peft') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_objectives_are_objects_the_trainer_asks():
    assert OBJECTIVES == ("elbo", "reference")
    elbo, ref = get_objective("elbo"), get_objective("reference")
    assert isinstance(elbo, ELBOObjective) and isinstance(ref, ReferenceObjective)
    assert (elbo.default_var_lr(1e-3), ref.default_var_lr(1e-3)) == (1e-2, 1e-3)
    assert (elbo.warmup_steps(60, 0.06), ref.warmup_steps(60, 0.06)) == (4, 3)
    assert (elbo.grad_scale(12), ref.grad_scale(12)) == (12.0, 1.0)
    ref.check_family("log_mean_field")
    with pytest.raises(ScalaBLError, match="mean-field recipe"):
        ref.check_family("full_rank")
    with pytest.raises(ScalaBLError, match="unknown objective 'x'; use 'elbo' or 'reference'"):
        TrainConfig(objective="x")


# ------------------------------------------------------- every method, end to end


@pytest.mark.parametrize("method", method_names())
def test_every_method_fits_predicts_saves_and_loads(tmp_path, method):
    """Build on the tiny model, fit 2 steps, predict, save and load: the same predictions."""
    data = toy_dataset(8)
    sbl = make_scalabl(method=method, ensemble_size=2)
    history = sbl.fit(data, _cfg(), output_dir=tmp_path / "ckpt")
    expected_steps = 2 * (2 if get_method(method).uses_ensemble_size else 1)
    assert len(history.steps) == expected_steps
    before = sbl.predict(data, num_samples=3, progress=False)
    model, tok = tiny_model_and_tokenizer()
    config = ScalaBLConfig(base_model="tiny-llama", rank=4, method=method, ensemble_size=2)
    loaded = ScalaBL.from_parts(tmp_path / "ckpt", config, model, tok)
    after = loaded.predict(data, num_samples=3, progress=False)
    np.testing.assert_allclose(after.probs, before.probs, rtol=1e-6, atol=1e-9)
    expected_s = {"mle": 1, "map": 1, "ensemble": 2}.get(method, 3)
    assert before.num_samples == expected_s
    assert loaded.num_extra_parameters == sbl.num_extra_parameters
    assert (sbl.num_extra_parameters == 0) == (method in NO_EXTRA)
    meta = json.loads((tmp_path / "ckpt" / "scalabl_config.json").read_text())
    assert meta["method"] == method and meta["num_data"] == len(data) == loaded.model.num_data
    assert sbl.summary().startswith(f"{method} on tiny-llama")
    assert (sbl.export_adapter(tmp_path / "adapter") / "adapter_config.json").is_file()


# --------------------------------------------------------------- nothing hidden


def test_the_trainer_passes_num_data_and_leaves_the_model_alone():
    sbl = make_scalabl()
    assert sbl.model.num_data is None
    sbl.fit(toy_dataset(8), _cfg(steps=1))
    assert sbl.model.num_data is None  # the trainer passed N with every call
    assert sbl.num_data == 8


def test_the_facade_is_freed_without_the_cycle_collector():
    """The latent family holds its guide weakly and nothing holds the facade."""
    sbl = make_scalabl()
    ref = weakref.ref(sbl)
    gc.disable()
    try:
        del sbl
        assert ref() is None
    finally:
        gc.enable()


def test_outside_any_scope_the_layers_use_the_guides_posterior_mean():
    sbl = make_scalabl()
    with torch.no_grad():
        for p in sbl.guide.parameters():
            p.add_(0.3)
    point = sbl.subspace.point()
    mean = sbl.posterior_mean()
    assert point.keys() == mean.keys()
    for name in point:
        torch.testing.assert_close(point[name], mean[name])
    sbl.rebuild_guide()  # the family follows the new guide
    torch.testing.assert_close(
        sbl.subspace.point()[sbl.model.site_names[0]],
        sbl.posterior_mean()[sbl.model.site_names[0]],
    )
