"""The paper's baselines through the ScalaBL API, each pinned to an exact answer (tiny models)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from pyro.infer import Trace_ELBO
from scalabl_testutils import make_scalabl, randomize_lora, toy_dataset

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.train import TrainConfig
from scalabl_pyro.methods import METHODS
from scalabl_pyro.methods import ensemble as ens
from scalabl_pyro.methods.blob import BlobGuide, BlobLoRA
from scalabl_pyro.methods.laplace import (
    LaplaceGuide,
    exact_hessian_attention,
    negative_log_joint_hessian,
)
from scalabl_pyro.program.model import pyro_settings
from scalabl_pyro.program.objectives import analytic_kl
from scalabl_pyro.testing import tiny_model_and_tokenizer


def _cfg(**kw) -> TrainConfig:
    kw.setdefault("steps", 3)
    kw.setdefault("batch_size", 4)
    kw.setdefault("lr", 1e-2)
    return TrainConfig(progress=False, **kw)


def _batch(sbl: ScalaBL, data):
    exs = list(data)
    return sbl.format_for(data).encode(exs, indices=list(range(len(exs))))


# ------------------------------------------------------------------ config


def test_method_settings_resolve_and_bad_ones_are_refused():
    assert ScalaBLConfig(method="mc_dropout").lora_dropout == 0.1
    assert ScalaBLConfig(method="mc_dropout", dropout=0.0).lora_dropout == 0.0
    assert ScalaBLConfig().lora_dropout == 0.0
    assert replace(ScalaBLConfig(), method="mc_dropout").lora_dropout == 0.1
    assert ScalaBLConfig(method="map").guide == "mle"
    assert ScalaBLConfig(method="laplace").guide == "full_rank"
    assert ScalaBLConfig(method="blob").guide == "mean_field"
    with pytest.raises(ScalaBLError, match="unknown method"):
        ScalaBLConfig(method="swag")
    with pytest.raises(ScalaBLError, match="applies to method 'scalabl' only"):
        ScalaBLConfig(method="mle", guide="full_rank")
    with pytest.raises(ScalaBLError, match="ensemble_size >= 2"):
        ScalaBLConfig(method="ensemble", ensemble_size=1)
    with pytest.raises(ScalaBLError, match="lm_head"):
        ScalaBLConfig(method="blob", task_format="letter", target_modules=("q_proj", "lm_head"))
    cfg = ScalaBLConfig(method="ensemble", ensemble_size=3)
    # a saved config reloads to the same model (init_scale is saved resolved: 0.4)
    assert ScalaBLConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_point_methods_refuse_particles_and_the_reference_objective():
    sbl = make_scalabl(method="map")
    with pytest.raises(ScalaBLError, match="num_particles"):
        sbl.fit(toy_dataset(4), _cfg(num_particles=2))
    with pytest.raises(ScalaBLError, match="reference"):
        make_scalabl(method="blob").fit(toy_dataset(4), _cfg(objective="reference"))


# --------------------------------------------------------------------- MAP


def test_map_loss_is_scaled_nll_minus_gaussian_log_prior_of_the_lora_factors():
    """-(N/B sum log p(y|x) + sum log N(theta; 0, sigma^2)), theta = (B, diag(s) A)."""
    sbl = make_scalabl(method="map", lora_prior_scale=0.3)
    randomize_lora(sbl.subspace)
    data = toy_dataset(6)
    batch = _batch(sbl, data)
    sbl.model.num_data = 12  # the batch is half of the data set
    with pyro_settings(), torch.no_grad():
        loss = Trace_ELBO()(sbl.model, sbl.guide)(batch, batch.labels)
        point = sbl.posterior_mean()
        scores = sbl.model.scores(batch, point)
    nll = -torch.log_softmax(scores, -1).gather(1, batch.labels[:, None]).sum()
    log_prior = 0.0
    for name, layer in sbl.subspace.layers.items():
        for t in (
            layer.lora_B["default"].weight,
            point[name][:, None] * layer.lora_A["default"].weight,
        ):
            log_prior += float(
                (
                    -0.5 * t.double() ** 2 / 0.3**2 - math.log(0.3) - 0.5 * math.log(2 * math.pi)
                ).sum()
            )
    assert float(loss) == pytest.approx(2 * float(nll) - log_prior, rel=1e-5)
    # the prior sees plain LoRA's factors: (c s, A / c) has the same prior
    c = 3.0
    scaled = {k: c * v for k, v in point.items()}
    with torch.no_grad():
        for layer in sbl.subspace.layers.values():
            layer.lora_A["default"].weight /= c
        assert float(sbl.subspace.lora_log_prior(scaled, 0.3)) == pytest.approx(log_prior, rel=1e-5)


# ---------------------------------------------------------------------- BLoB


def test_blob_kl_equals_the_closed_form_gaussian_kl():
    sbl = make_scalabl(method="blob", init_scale=0.07)
    assert isinstance(sbl.subspace, BlobLoRA) and isinstance(sbl.guide, BlobGuide)
    with torch.no_grad():
        for p in sbl.guide.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    expected = 0.0
    for name in sbl.model.site_names:
        m = sbl.subspace.mean(name).double()
        s = sbl.guide._get_loc_and_scale(name)[1].double()
        sp = 0.2
        expected += float((torch.log(sp / s) + (s**2 + m**2) / (2 * sp**2) - 0.5).sum())
    assert float(analytic_kl(sbl.model, sbl.guide)) == pytest.approx(expected, rel=1e-6)
    # and the ELBO trains that KL: loss - N * NLL equals it (analytic KL, no Monte Carlo)
    r, d = sbl.subspace.event_shape(sbl.model.site_names[0])
    assert sbl.num_extra_parameters == len(sbl.model.site_names) * r * d


def _q_layer(sbl):
    name = next(n for n in sbl.model.site_names if "q_proj" in n)
    return name, sbl.subspace.layers[name]


def test_blob_flipout_rows_are_exact_draws_and_antithetic_signs_average_to_the_mean():
    sbl = make_scalabl(method="blob")
    randomize_lora(sbl.subspace)
    name, layer = _q_layer(sbl)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, layer.in_features, generator=gen)
    m = sbl.subspace.mean(name).detach()
    eps = 0.1 * torch.randn(m.shape, generator=gen)
    draws = {k: sbl.subspace.mean(k).detach() for k in sbl.model.site_names}
    draws[name] = m + eps
    groups = torch.tensor([0, 0, 1, 2])  # rows 0 and 1 are one example
    with torch.no_grad():
        mean_out = layer(x)  # outside any scope: the posterior mean
        with sbl.subspace.use(draws, groups=groups):
            u, v = sbl.subspace.flipout_signs(name, groups, x.shape[-1], x.device)
            out = layer(x)
            assert torch.equal(layer(x), out)  # signs live as long as the scope
        with sbl.subspace.use(draws, groups=groups):
            sbl.subspace.scope_cache()[("flipout", name)] = (u, -v)
            out_flipped = layer(x)
    torch.testing.assert_close((out + out_flipped) / 2, mean_out, atol=1e-5, rtol=1e-5)
    base = layer.base_layer(x)
    lora_b = layer.lora_B["default"].weight
    for row, g in enumerate(groups.tolist()):
        a_n = m + eps * (v[g][:, None] * u[g][None, :]).float()  # A_n = M + E * (v u^T)
        expected = base[row] + layer.scaling["default"] * (x[row] @ a_n.T) @ lora_b.T
        torch.testing.assert_close(out[row], expected, atol=1e-5, rtol=1e-5)


def test_blob_predictive_mean_mode_is_the_peft_model_alone():
    sbl = make_scalabl(method="blob")
    randomize_lora(sbl.subspace)
    data = toy_dataset(4)
    mean_pred = sbl.predict(data, mode="mean", progress=False)
    sampled = sbl.predict(data, num_samples=3, progress=False)
    assert mean_pred.num_samples == 1 and sampled.num_samples == 3
    assert not np.allclose(sampled.sample_log_probs[0], sampled.sample_log_probs[1])
    with torch.no_grad():
        plain = sbl.model.scores(_batch(sbl, data), sbl.posterior_mean())
    np.testing.assert_allclose(
        mean_pred.probs, torch.softmax(plain.double(), -1).numpy(), rtol=1e-5, atol=1e-6
    )


# ------------------------------------------------------------------- Laplace


def _neg_log_joint(sbl: ScalaBL, batch):
    guide = sbl.guide

    def f(z):
        latents = guide.unpack(z)
        scores = sbl.model.scores(batch, latents)
        nll = -torch.log_softmax(scores.float(), -1).gather(1, batch.labels[:, None]).sum()
        return nll - sum(sbl.model.prior(k).log_prob(v) for k, v in latents.items())

    return f


def test_laplace_exact_covariance_is_the_inverse_hessian_of_the_negative_log_joint():
    data = toy_dataset(5)
    # summed scores: curvature large enough that, far from a minimum, the Hessian is indefinite
    sbl = make_scalabl(
        method="laplace", laplace_hessian="exact", prior_scale=0.7, normalization="sum"
    )
    randomize_lora(sbl.subspace)  # far from a minimum: an indefinite Hessian is refused
    with pytest.raises(ScalaBLError, match="not positive definite"):
        sbl.fit_laplace(data)
    sbl = make_scalabl(method="laplace", laplace_hessian="exact", prior_scale=0.2)
    randomize_lora(sbl.subspace)
    cov = sbl.fit_laplace(data, batch_size=2)  # the Hessian is summed over 3 batches
    z = sbl.guide.loc.detach().clone()
    with exact_hessian_attention():
        h = torch.autograd.functional.hessian(_neg_log_joint(sbl, _batch(sbl, data)), z).double()
    torch.testing.assert_close(cov, torch.linalg.inv(h), rtol=1e-4, atol=1e-6)
    chol = sbl.guide.scale_tril.double()
    torch.testing.assert_close(chol @ chol.T, cov, rtol=1e-5, atol=1e-8)
    d = sbl.subspace.num_latents
    assert sbl.num_extra_parameters == d * (d + 1) // 2


def test_laplace_ggn_equals_the_hessian_where_scores_are_linear_in_s():
    """Letter format, q_proj with B = 0 and the answer head: scores are linear in s."""
    sbl = make_scalabl(
        method="laplace", task_format="letter", target_modules=("q_proj", "lm_head"), num_classes=3
    )
    with torch.no_grad():
        sbl.subspace.head.lora_B.normal_(generator=torch.Generator().manual_seed(2))
    data = toy_dataset(6)
    assert isinstance(sbl.guide, LaplaceGuide)
    h_ggn = negative_log_joint_hessian(
        sbl.model, sbl.guide, sbl.format_for(data), data, batch_size=4
    )
    z = sbl.guide.loc.detach().clone()
    with exact_hessian_attention():
        h = torch.autograd.functional.hessian(_neg_log_joint(sbl, _batch(sbl, data)), z).double()
    torch.testing.assert_close(h_ggn, h, rtol=1e-4, atol=1e-5)


def test_laplace_fit_trains_the_map_then_samples_from_the_covariance():
    sbl = make_scalabl(method="laplace")
    data = toy_dataset(8)
    sbl.fit(data, _cfg())
    assert sbl.guide.fitted
    pred = sbl.predict(data, num_samples=4, progress=False)
    assert pred.num_samples == 4
    assert not np.allclose(pred.sample_log_probs[0], pred.sample_log_probs[1])


# ---------------------------------------------------------------- MC dropout


def test_mc_dropout_with_p_zero_is_mle():
    data = toy_dataset(8)
    mle = make_scalabl(method="mle")
    mcd = make_scalabl(method="mc_dropout", dropout=0.0)
    mle.fit(data, _cfg())
    mcd.fit(data, _cfg())
    p_mle = mle.predict(data, num_samples=5, progress=False)
    p_mcd = mcd.predict(data, num_samples=5, progress=False)
    assert p_mle.num_samples == 1 and p_mcd.num_samples == 5
    np.testing.assert_allclose(p_mcd.probs, p_mle.probs, rtol=1e-6, atol=1e-9)


def test_mc_dropout_samples_differ_and_mean_mode_switches_dropout_off():
    sbl = make_scalabl(method="mc_dropout", dropout=0.3)
    randomize_lora(sbl.subspace)
    data = toy_dataset(4)
    pred = sbl.predict(data, num_samples=3, progress=False)
    assert not np.allclose(pred.sample_log_probs[0], pred.sample_log_probs[1])
    mean = sbl.predict(data, mode="mean", progress=False)
    again = sbl.predict(data, mode="mean", progress=False)
    np.testing.assert_array_equal(mean.probs, again.probs)


# ------------------------------------------------------------------ ensemble


def test_ensemble_of_identical_members_equals_one_member():
    sbl = make_scalabl(method="ensemble", ensemble_size=3)
    randomize_lora(sbl.subspace)
    data = toy_dataset(5)
    single = sbl.predict(data, progress=False)
    sbl.members = [ens.member_state(sbl.subspace, sbl.guide)] * 3
    avg = sbl.predict(data, progress=False)
    assert avg.num_samples == 3
    np.testing.assert_allclose(avg.probs, single.probs, rtol=1e-12)


def test_ensemble_members_differ_share_one_base_and_average_probabilities():
    sbl = make_scalabl(method="ensemble", ensemble_size=2)
    data = toy_dataset(8)
    sbl.fit(data, _cfg())
    a, b = sbl.members
    assert not torch.equal(
        a["lora." + next(iter(sbl.subspace.lora_state()))],
        b["lora." + next(iter(sbl.subspace.lora_state()))],
    )
    pred = sbl.predict(data, progress=False)
    manual = np.exp(pred.sample_log_probs).mean(0)
    np.testing.assert_allclose(pred.probs, manual, rtol=1e-10)
    assert sbl.num_extra_parameters == sbl.subspace.num_lora_parameters()
    assert len([m for m in sbl.model.modules() if type(m).__name__ == "LlamaModel"]) == 1


# --------------------------------------------------------- every method, end to end


# The fit / save / load / predict round trip of every registered method is in test_methods.py.


# ----------------------------------------------------------------- command line


@pytest.mark.parametrize("method", ["ensemble", "blob"])
def test_cli_trains_and_evaluates_a_baseline(tmp_path, method):
    import json

    from scalabl_pyro import cli

    model, tok = tiny_model_and_tokenizer()
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "toy.jsonl"
    rows = [
        {"id": str(i), "question": f"Q {i}?", "choices": ["a whale", "a rock"], "label": "A"}
        for i in range(6)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    ckpt = tmp_path / "ckpt"
    extra = ["--ensemble-size", "2"] if method == "ensemble" else ["--dropout", "0.05"]
    argv = ["train", "--model", str(model_dir), "--data", str(data), "--output", str(ckpt)]
    argv += ["--steps", "2", "--rank", "2", "--method", method, "--no-progress", *extra]
    assert cli.main(argv) == 0
    meta = json.loads((ckpt / "scalabl_config.json").read_text())
    assert meta["config"]["method"] == method and meta["num_extra_parameters"] > 0
    assert (ckpt / "ensemble.safetensors").is_file() == (method == "ensemble")
    out = tmp_path / "m.json"
    ev = ["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(out)]
    assert cli.main([*ev, "--no-progress"]) == 0
    assert json.loads(out.read_text())["n"] == 6
    if method == "ensemble":  # the members are averaged: --samples would change nothing
        assert cli.main([*ev, "--samples", "3", "--no-progress"]) == 2
    bad = ["--guide", "full_rank"] if method == "blob" else ["--prior-scale", "0.5"]
    assert cli.main([*argv[: -len(extra)], "--overwrite", *bad]) == 2


@pytest.mark.slow
def test_every_method_on_the_real_model(report_figure):
    """One step and a 2-sample prediction of every method on SmolLM2-135M and 4 ARC-Easy items."""
    from scalabl_pyro import load_task

    train = load_task("arc_easy", "train", limit=4, seed=0)
    val = load_task("arc_easy", "validation", limit=4, seed=0)
    for method in METHODS:
        sbl = ScalaBL.from_base(method=method, ensemble_size=2, dtype="bfloat16")
        sbl.fit(train, TrainConfig(steps=1, batch_size=4, lr=1e-3, progress=False))
        pred = sbl.predict(val, num_samples=2, batch_size=8, progress=False)
        assert np.isfinite(pred.probs).all() and np.allclose(pred.probs.sum(1), 1.0)
        assert pred.num_samples == {"mle": 1, "map": 1}.get(method, 2)
        report_figure(
            f"{method} extra params / NLL", [sbl.num_extra_parameters, pred.metrics()["nll"]]
        )
