"""Objectives: the ELBO's KL term against closed forms, KL weights, the reference recipe."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from scalabl_testutils import (
    make_scalabl,
    randomize_lora,
    set_constrained,
    toy_dataset,
    unconstrained,
)

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.objectives import (
    KLScale,
    KLSchedule,
    LikelihoodMonitor,
    analytic_kl,
    blob_cycle_length,
    blob_cyclic_weight,
    elbo_loss,
    gaussian_kl,
    make_elbo,
    mean_nll,
    reverse_kl,
)

SIGMA_P = 0.7


def _mean_field(seed: int = 0, **config):
    """A mean-field ScalaBL with random per-coordinate locations and scales."""
    sbl = make_scalabl(guide="mean_field", prior_scale=SIGMA_P, **config)
    randomize_lora(sbl.subspace)
    gen = torch.Generator().manual_seed(seed)
    r = sbl.subspace.rank
    mus, sigmas = {}, {}
    for name in sbl.model.site_names:
        mus[name] = torch.randn(r, generator=gen)
        sigmas[name] = 0.05 + torch.rand(r, generator=gen)
        set_constrained(sbl.guide, f"locs.{name}", mus[name])
        set_constrained(sbl.guide, f"scales.{name}", sigmas[name])
    data = toy_dataset(8)
    sbl.model.num_data = len(data)
    batch = sbl.format_for(data).encode(list(data)[:4], indices=[0, 1, 2, 3])
    return sbl, batch, mus, sigmas


def _kl_by_hand(mus, sigmas, sp=SIGMA_P) -> float:
    """sum_i KL(N(mu_i, sigma_i^2) || N(0, sp^2)) in numpy."""
    total = 0.0
    for name in mus:
        mu, s = mus[name].double().numpy(), sigmas[name].double().numpy()
        total += np.sum(np.log(sp / s) + (s**2 + mu**2) / (2 * sp**2) - 0.5)
    return float(total)


def _nll_by_hand(sbl, batch, seed: int) -> float:
    """-(N/B) sum log p(y | s) with s the guide draw that ``seed`` produces."""
    pyro.set_rng_seed(seed)
    tr = poutine.trace(sbl.guide).get_trace(batch)
    s = {n: tr.nodes[n]["value"] for n in sbl.model.site_names}
    with torch.no_grad():
        scores = sbl.model.scores(batch, s)
    ll = torch.log_softmax(scores.double(), -1).gather(1, batch.labels[:, None]).sum()
    return -float(ll) * sbl.model.num_data / batch.batch_size


def _loss(loss_fn, batch, weight, seed=0) -> float:
    pyro.set_rng_seed(seed)
    return float(elbo_loss(loss_fn, batch, weight).detach())


def test_mean_field_elbo_is_scaled_nll_plus_closed_form_kl():
    sbl, batch, mus, sigmas = _mean_field()
    kl = _kl_by_hand(mus, sigmas)
    assert float(analytic_kl(sbl.model, sbl.guide).detach()) == pytest.approx(kl, rel=1e-5)
    elbo = make_elbo("mean_field")
    assert isinstance(elbo, TraceMeanField_ELBO)
    loss_fn = elbo(sbl.model, sbl.guide)
    losses = {w: _loss(loss_fn, batch, w) for w in (0.0, 0.5, 1.0, 2.0)}
    nll = _nll_by_hand(sbl, batch, seed=0)
    assert losses[0.0] == pytest.approx(nll, rel=1e-5)  # w = 0: the scaled NLL alone
    assert losses[1.0] - nll == pytest.approx(kl, rel=1e-4)
    assert losses[2.0] - losses[1.0] == pytest.approx(kl, rel=1e-4)
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * kl, rel=1e-4)  # KLScale halves it
    # the likelihood term read off the program while the loss runs is the same draw's
    pyro.set_rng_seed(0)
    with LikelihoodMonitor() as monitor:
        elbo_loss(loss_fn, batch, 1.0)
    per_example = -monitor.mean_log_likelihood * sbl.model.num_data
    assert per_example == pytest.approx(nll, rel=1e-5)


def test_monte_carlo_elbo_kl_term_is_log_q_minus_log_p_of_the_draw():
    sbl = make_scalabl(guide="full_rank", prior_scale=SIGMA_P, init_scale=0.3)
    randomize_lora(sbl.subspace)
    data = toy_dataset(8)
    sbl.model.num_data = len(data)
    batch = sbl.format_for(data).encode(list(data)[:4], indices=[0, 1, 2, 3])
    elbo = make_elbo("full_rank")
    assert type(elbo) is Trace_ELBO
    loss_fn = elbo(sbl.model, sbl.guide)
    pyro.set_rng_seed(7)
    tr = poutine.trace(sbl.guide).get_trace(batch)
    z = torch.cat([tr.nodes[n]["value"] for n in sbl.model.site_names])
    with torch.no_grad():
        log_q = float(sbl.guide.get_posterior().log_prob(z))
        log_p = float(torch.distributions.Normal(0.0, SIGMA_P).log_prob(z).sum())
    diff = _loss(loss_fn, batch, 2.0, seed=7) - _loss(loss_fn, batch, 1.0, seed=7)
    assert diff == pytest.approx(log_q - log_p, rel=1e-4, abs=1e-3)
    assert _loss(loss_fn, batch, 0.0, seed=7) == pytest.approx(
        _nll_by_hand(sbl, batch, seed=7), rel=1e-5
    )


def test_kl_scale_touches_only_unobserved_sites():
    sbl, batch, _, _ = _mean_field()
    with KLScale(0.25):
        model_tr = poutine.trace(sbl.model).get_trace(batch, batch.labels)
        guide_tr = poutine.trace(sbl.guide).get_trace(batch)
    for name in sbl.model.site_names:
        assert model_tr.nodes[name]["scale"] == 0.25
        assert guide_tr.nodes[name]["scale"] == 0.25
    assert model_tr.nodes["obs"]["scale"] == pytest.approx(8 / 4)
    with pytest.raises(ScalaBLError, match=">= 0"):
        KLScale(-1.0)


def test_gaussian_kl_matches_torch():
    gen = torch.Generator().manual_seed(0)
    mq, mp = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    sq, sp = 0.1 + torch.rand(5, generator=gen), 0.1 + torch.rand(5, generator=gen)
    want = torch.distributions.kl_divergence(
        torch.distributions.Normal(mq, sq), torch.distributions.Normal(mp, sp)
    )
    torch.testing.assert_close(gaussian_kl(mq, sq, mp, sp), want)


def test_reverse_kl_closed_form_and_its_minimiser():
    sbl, _, mus, sigmas = _mean_field()
    want = 0.0
    for name in mus:  # KL(N(0, sp^2) || N(mu, sigma^2))
        mu, s = mus[name].double().numpy(), sigmas[name].double().numpy()
        want += np.sum(np.log(s / SIGMA_P) + (SIGMA_P**2 + mu**2) / (2 * s**2) - 0.5)
    assert float(reverse_kl(sbl.model, sbl.guide).detach()) == pytest.approx(want, rel=1e-5)

    # minimised over sigma at sigma^2 = sp^2 + mu^2 (wider than the prior)
    names = sbl.model.site_names
    raw = [unconstrained(sbl.guide, f"scales.{n}") for n in names]
    for factor, stationary in ((1.0, True), (0.8, False), (1.25, False)):
        for n in names:
            set_constrained(sbl.guide, f"scales.{n}", factor * torch.sqrt(SIGMA_P**2 + mus[n] ** 2))
        value = reverse_kl(sbl.model, sbl.guide)
        grads = torch.autograd.grad(value, raw)
        biggest = max(float(g.abs().max()) for g in grads)
        if stationary:
            assert biggest < 1e-5
            best = float(value.detach())
        else:
            assert biggest > 1e-2
            assert float(value.detach()) > best


def test_reverse_kl_needs_mean_field_and_a_prior():
    sbl = make_scalabl(guide="full_rank")
    with pytest.raises(ScalaBLError, match="mean-field"):
        reverse_kl(sbl.model, sbl.guide)
    assert analytic_kl(sbl.model, sbl.guide) is None
    sbl = make_scalabl(guide="mean_field")
    sbl.subspace.prior_scale = None
    with pytest.raises(ScalaBLError, match="prior"):
        reverse_kl(sbl.model, sbl.guide)
    assert analytic_kl(sbl.model, sbl.guide) is None


def test_mean_nll_is_the_per_example_nll_of_one_draw():
    sbl = make_scalabl(guide="delta")
    randomize_lora(sbl.subspace)
    data = toy_dataset(8)
    sbl.model.num_data = len(data)
    batch = sbl.format_for(data).encode(list(data)[:4], indices=[0, 1, 2, 3])
    point = {k: v.detach() for k, v in sbl.guide.median().items()}
    with torch.no_grad():
        scores = sbl.model.scores(batch, point)
    want = -torch.log_softmax(scores, -1).gather(1, batch.labels[:, None]).mean()
    torch.testing.assert_close(mean_nll(sbl.model, sbl.guide, batch).detach(), want)


# ------------------------------------------------------------------ KL schedules


@pytest.mark.parametrize(("num_data", "batch_size", "m"), [(1, 100, 1), (1, 33, 3), (1, 25, 4)])
def test_blob_cyclic_weight_small_cycles(num_data, batch_size, m):
    assert math.floor(100 * num_data ** (math.pi / 8) / batch_size) == m
    weights = [blob_cyclic_weight(t, num_data, batch_size) for t in range(1, m + 1)]
    for i, w in enumerate(weights, start=1):
        assert w == pytest.approx(m * 2**i / (2 ** (m + 1) - 1), rel=1e-12)
    assert sum(weights) == pytest.approx(m * (2 ** (m + 1) - 2) / (2 ** (m + 1) - 1), rel=1e-12)
    assert sum(weights) / m == pytest.approx(1.0, abs=0.34)
    assert max(weights) == weights[-1]
    # periodic with period M
    for t in range(1, m + 1):
        assert blob_cyclic_weight(t + m, num_data, batch_size) == weights[t - 1]
        assert blob_cyclic_weight(t + 5 * m, num_data, batch_size) == weights[t - 1]


def test_blob_raw_weight_and_cycle_length():
    assert blob_cycle_length(1, 33) == 3
    assert blob_cycle_length(10_000, 10**9) == 1  # at least one step per cycle
    raw = [blob_cyclic_weight(t, 1, 33, elbo_scaled=False) for t in (1, 2, 3)]
    assert raw == pytest.approx([2 / 15, 4 / 15, 8 / 15], rel=1e-12)
    sched = KLSchedule("cyclic", 2.0, num_data=1, batch_size=33)
    assert sched(3, elbo_scaled=False) == pytest.approx(2.0 * 8 / 15)
    assert sched(3) == pytest.approx(2.0 * 3 * 8 / 15)


def test_blob_cyclic_weight_large_cycle_is_finite_and_averages_one():
    n, b = 100_000, 4
    m = math.floor(100 * n ** (math.pi / 8) / b)
    assert m > 1100  # 2^(M+1) overflows a float
    weights = np.array([blob_cyclic_weight(t, n, b) for t in range(1, m + 1)])
    assert np.all(np.isfinite(weights)) and np.all(weights >= 0)
    assert weights.sum() == pytest.approx(m, rel=1e-9)
    assert weights.argmax() == m - 1
    assert weights[-1] == pytest.approx(m / 2, rel=1e-9)
    assert np.all(np.diff(weights) >= 0)  # early weights underflow to 0


def test_kl_schedules():
    assert KLSchedule("constant", 0.3)(17) == 0.3
    lin = KLSchedule("linear", 2.0, warmup_steps=4)
    assert [lin(t) for t in (1, 2, 4, 9)] == [0.5, 1.0, 2.0, 2.0]
    assert KLSchedule("linear", 2.0, warmup_steps=0)(1) == 2.0
    cyc = KLSchedule("cyclic", 0.5, num_data=1, batch_size=33)
    assert [cyc(t) for t in (1, 2, 3, 4)] == pytest.approx(
        [0.5 * 3 * 2**i / 15 for i in (1, 2, 3, 1)]
    )
    with pytest.raises(ScalaBLError, match="unknown KL schedule"):
        KLSchedule("cosine")


def test_make_elbo_choices():
    for family in ("full_rank", "low_rank", "block", "delta", "mle"):
        assert type(make_elbo(family)) is Trace_ELBO
    many = make_elbo("mean_field", num_particles=4)
    assert isinstance(many, TraceMeanField_ELBO)
    assert many.num_particles == 4 and many.vectorize_particles
    one = make_elbo("block")
    assert not one.vectorize_particles and one.max_plate_nesting == 1
    with pytest.raises(ScalaBLError, match="num_particles"):
        make_elbo("mean_field", num_particles=0)
