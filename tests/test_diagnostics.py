"""ArviZ conversion and Pareto-k of q, checked against the Pyro draws and exact answers."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import torch
from scalabl_testutils import make_scalabl, randomize_lora, toy_dataset

from scalabl_pyro.diagnostics.posterior import (
    combine_chains,
    diagnose,
    guide_draws_with_log_q,
    layer_names,
    log_prior,
    pareto_k_from_log_weights,
    pareto_k_of_q,
    point_log_lik_and_grads,
    prior_draws,
    to_inference_data,
)
from scalabl_pyro.diagnostics.posterior import loo as diag_loo
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.predict import draw_latents, predict
from scalabl_pyro.inference.train import TrainConfig
from scalabl_pyro.program.guides import guide_covariance
from scalabl_pyro.program.model import pyro_settings


def _fitted(guide: str = "mean_field", seed: int = 0, steps: int = 2):
    sbl = make_scalabl(guide=guide, seed=seed)
    randomize_lora(sbl.subspace)
    data = toy_dataset(8)
    sbl.fit(data, TrainConfig(steps=steps, batch_size=4, lr=1e-2, seed=seed, progress=False))
    return sbl, data


def test_inference_data_matches_the_pyro_draws():
    sbl, data = _fitted()
    idata = to_inference_data(sbl, data, num_samples=12, seed=5)
    draws, log_q = guide_draws_with_log_q(sbl.model, sbl.guide, 12, 5)
    sites = sbl.model.site_names
    post = idata.posterior["s"]
    assert post.dims == ("chain", "draw", "layer", "rank")
    assert post.shape == (1, 12, len(sites), 4)
    paths = [sbl.subspace.paths[n].removeprefix("base_model.model.") for n in sites]
    assert list(post.coords["layer"].values) == paths == layer_names(sbl.model)
    for i, name in enumerate(sites):
        np.testing.assert_allclose(post.values[0, :, i], draws[name].numpy(), rtol=0, atol=1e-7)
    # the pointwise log-likelihood is the model's, under exactly those draws
    pred = predict(sbl.model, sbl.guide, sbl.format_for(data), data, latents=draws, progress=False)
    np.testing.assert_allclose(idata.log_likelihood["obs"].values[0], pred.log_likelihood())
    np.testing.assert_array_equal(idata.observed_data["obs"].values, [ex.label for ex in data])
    pp = idata.posterior_predictive["obs"].values
    assert pp.shape == (1, 12, 8) and pp.min() >= 0 and pp.max() < 3
    assert idata.prior["s"].shape == post.shape
    # the training history, step by step
    steps = sbl.history.to_dict()["steps"]
    np.testing.assert_allclose(idata.sample_stats["elbo"].values[0], [r["loss"] for r in steps])
    np.testing.assert_allclose(idata.sample_stats["kl"].values[0], [r["kl"] for r in steps])
    # the log importance weights of q against the posterior of exactly these questions
    lw = log_prior(sbl.model, draws) + pred.log_likelihood().sum(1) - log_q
    np.testing.assert_allclose(idata.sample_stats["log_weight"].values[0], lw)
    with pytest.raises(ScalaBLError, match="at least 25 draws"):
        diag_loo(idata)  # 12 draws cannot fit a Pareto tail
    assert diag_loo(to_inference_data(sbl, data, num_samples=25)).pointwise.shape == (8,)


def test_prior_draws_use_each_sites_own_loc_and_scale():
    sbl = make_scalabl(prior_scale=0.5)
    sites = sbl.model.site_names
    sbl.subspace.prior_loc = {sites[0]: torch.full((4,), 3.0)}  # N(3, (0.5 * (1 + 3))^2)
    draws = prior_draws(sbl.model, 4000, seed=1)
    assert draws.shape == (4000, len(sites), 4)
    np.testing.assert_allclose(draws[:, 0].mean(0), 3.0, atol=0.15)
    np.testing.assert_allclose(draws[:, 0].std(0), 2.0, rtol=0.06)
    np.testing.assert_allclose(draws[:, 1].mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(draws[:, 1].std(0), 0.5, rtol=0.06)
    assert prior_draws(make_scalabl(guide="mle").model, 10) is None


def test_fits_combine_as_chains():
    a, data = _fitted(seed=0)
    b, _ = _fitted(seed=1)
    both = to_inference_data([a, b], data, num_samples=6, seed=0)
    assert both.posterior.sizes["chain"] == 2
    joined = combine_chains(
        [
            to_inference_data(a, data, num_samples=6, seed=0),
            to_inference_data(b, data, num_samples=6, seed=1),
        ]
    )
    for group in ("posterior", "prior", "log_likelihood", "sample_stats"):
        first, second = getattr(both, group), getattr(joined, group)
        for var in first.data_vars:
            np.testing.assert_allclose(first[var].values, second[var].values)
    rhat = az.rhat(joined)["s"]
    assert rhat.shape == (len(a.model.site_names), 4) and np.all(np.isfinite(rhat.values))
    assert np.all(az.ess(joined)["s"].values > 0)
    with pytest.raises(ScalaBLError, match="does not line up"):
        combine_chains([joined, to_inference_data(a, data, num_samples=5, seed=0)])


def test_khat_of_the_exact_posterior_of_a_gaussian_is_small_and_weights_are_flat():
    """theta ~ N(0, I_d), y_i ~ N(theta, sigma^2 I_d): q = the exact posterior."""
    rng = np.random.default_rng(0)
    d, n, sigma = 5, 20, 0.7
    y = rng.normal(1.0, sigma, size=(n, d))
    prec = 1.0 + n / sigma**2
    mu, sd = y.sum(0) / sigma**2 / prec, prec**-0.5

    def log_joint(th):
        ll = -0.5 * (((y[None] - th[:, None]) / sigma) ** 2).sum((1, 2))
        return ll - 0.5 * (th**2).sum(1)

    def log_normal(th, m, s):
        return (-0.5 * ((th - m) / s) ** 2 - np.log(s)).sum(1)

    th = mu + sd * rng.standard_normal((400, d))
    lw = log_joint(th) - log_normal(th, mu, sd)
    assert np.ptp(lw) < 1e-8  # equal up to the normalising constant
    k, smoothed = pareto_k_from_log_weights(lw)
    assert k < 0.5
    np.testing.assert_allclose(np.exp(smoothed), 1 / 400, rtol=1e-6)
    # an approximation 3x too narrow misses the tails: heavy-tailed weights
    th = mu + 0.3 * sd * rng.standard_normal((400, d))
    k_narrow, _ = pareto_k_from_log_weights(log_joint(th) - log_normal(th, mu, 0.3 * sd))
    assert k_narrow > 0.7
    # exactly constant weights have no tail
    assert pareto_k_from_log_weights(np.zeros(30))[0] == float("-inf")


@pytest.mark.parametrize("family", ["mean_field", "full_rank", "low_rank", "block"])
def test_log_q_of_guide_draws_is_the_guides_density(family):
    sbl, _ = _fitted(family)
    draws, log_q = guide_draws_with_log_q(sbl.model, sbl.guide, 6, seed=2)
    z = torch.cat([draws[n] for n in sbl.model.site_names], dim=1)
    with pyro_settings(), torch.no_grad():
        if family == "mean_field":
            exact = sum(
                torch.distributions.Normal(*sbl.guide._get_loc_and_scale(n))
                .log_prob(draws[n])
                .sum(1)
                for n in sbl.model.site_names
            )
        elif family == "block":
            cov = torch.as_tensor(guide_covariance(sbl.guide, sbl.model.site_names))
            loc = torch.cat([sbl.posterior_mean()[n].reshape(-1) for n in sbl.model.site_names])
            exact = torch.distributions.MultivariateNormal(loc.double(), cov).log_prob(z.double())
        else:
            exact = sbl.guide.get_posterior().log_prob(z)
    np.testing.assert_allclose(log_q, exact.numpy(), rtol=1e-5, atol=1e-4)


def test_block_covariance_matches_its_draws():
    sbl, _ = _fitted("block")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sbl.guide.named_parameters():
            if "scale_trils" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
    exact = guide_covariance(sbl.guide, sbl.model.site_names)
    draws = draw_latents(sbl.model, sbl.guide, 8000, seed=4)
    flat = torch.cat([draws[n] for n in sbl.model.site_names], dim=1).double().numpy()
    emp = np.cov(flat, rowvar=False)
    np.testing.assert_allclose(emp, exact, atol=0.08 * np.max(np.diag(exact)))
    r = 4
    assert np.all(exact[:r, r:] == 0)  # layers are independent
    assert np.abs(exact[:r, :r] - np.diag(np.diag(exact[:r, :r]))).max() > 0


def test_pareto_k_of_q_scores_every_training_question_under_every_draw():
    sbl, data = _fitted("full_rank")
    diag = diagnose(sbl, data, toy_dataset(6, num_choices=4), num_samples=30, seed=1)
    draws, log_q = guide_draws_with_log_q(sbl.model, sbl.guide, 30, 1)
    pred = predict(sbl.model, sbl.guide, sbl.format_for(data), data, latents=draws, progress=False)
    ll = pred.log_likelihood()
    np.testing.assert_allclose(diag.train_log_lik, ll)
    lw = log_prior(sbl.model, draws) + ll.sum(1) - log_q
    np.testing.assert_allclose(diag.khat.log_weights, lw)
    assert diag.khat.estimator == "exact" and diag.khat.num_data == 8
    assert diag.khat.khat == pytest.approx(pareto_k_from_log_weights(lw)[0])
    assert diag.loo.pareto_k.shape == (8,) and diag.loo.kind == "loo"
    assert diag.heldout is not None and diag.heldout.num_data == 6 and diag.heldout.num_draws == 10
    pk = pareto_k_of_q(sbl, data, num_samples=30, seed=1)
    assert pk.khat == pytest.approx(diag.khat.khat)
    with pytest.raises(ScalaBLError, match="at least 25 draws"):
        pareto_k_of_q(sbl, data, num_samples=10)
    delta, _ = _fitted("delta", steps=1)
    with pytest.raises(ScalaBLError, match="point-mass"):
        pareto_k_of_q(delta, data)


def test_difference_estimator_on_the_model_is_exact_when_the_subsample_is_everything():
    sbl, data = _fitted("mean_field")
    exact = diagnose(sbl, data, num_samples=25, seed=2)
    diff = diagnose(sbl, data, num_samples=25, seed=2, exact_limit=4, subsample_size=8)
    assert diff.khat.estimator == "difference" and diff.khat.subsample_size == 8
    np.testing.assert_allclose(diff.khat.log_weights, exact.khat.log_weights, rtol=1e-6, atol=1e-6)
    assert diff.khat.log_lik_se == pytest.approx(0.0, abs=1e-9)
    # a real subsample: an estimate with an honest standard error
    part = diagnose(sbl, data, num_samples=25, seed=2, exact_limit=4, subsample_size=4)
    err = np.abs(part.khat.log_weights - exact.khat.log_weights)
    assert part.khat.log_lik_se > 0 and err.max() < 6 * part.khat.log_lik_se + 1e-6


def test_point_gradients_match_finite_differences():
    sbl, data = _fitted("mean_field")
    point = dict(sbl.posterior_mean())
    ll, grads = point_log_lik_and_grads(sbl, data, point, per_example=True)
    _, total = point_log_lik_and_grads(sbl, data, point, per_example=False, batch_size=3)
    np.testing.assert_allclose(total, grads.sum(0), rtol=1e-4, atol=1e-7)  # float32 batches
    name = sbl.model.site_names[0]
    eps = 1e-2  # central differences in float32: error O(eps^2) against round-off O(1e-7 / eps)
    for j in range(2):
        up = {k: v.clone() for k, v in point.items()}
        up[name][j] += eps
        down = {k: v.clone() for k, v in point.items()}
        down[name][j] -= eps
        fd = (
            point_log_lik_and_grads(sbl, data, up, per_example=False)[0]
            - point_log_lik_and_grads(sbl, data, down, per_example=False)[0]
        ) / (2 * eps)
        np.testing.assert_allclose(grads[:, j], fd, rtol=2e-2, atol=2e-4)


def test_a_model_guide_pair_needs_a_format_to_score_data():
    sbl, data = _fitted()
    idata = to_inference_data((sbl.model, sbl.guide), num_samples=3)
    assert set(idata.groups()) == {"posterior", "prior"}
    with pytest.raises(ScalaBLError, match="needs a task format"):
        to_inference_data((sbl.model, sbl.guide), data, num_samples=3)
    with_fmt = to_inference_data(
        (sbl.model, sbl.guide), data, num_samples=3, fmt=sbl.format_for(data)
    )
    assert with_fmt.log_likelihood["obs"].shape == (1, 3, 8)
    with pytest.raises(ScalaBLError, match="cannot read a fit"):
        to_inference_data("nope")
