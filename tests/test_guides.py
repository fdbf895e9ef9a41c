"""Guide families: exact posteriors of a conjugate model, and free-parameter counts.

The conjugate model has the ScalaBL shape: three latent sites ``s.layer<i>`` of
shape (r,), prior N(0, sigma_p^2), and a linear-Gaussian likelihood on the
concatenated ``s`` whose design matrix correlates the sites, so the exact
posterior N(m, Sigma) has cross-site covariance. Each family is built by the
library's ``build_guide`` and fitted with the library's ``make_elbo``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from scalabl_testutils import make_scalabl

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.families import GUIDE_FAMILIES
from scalabl_pyro.program.guides import (
    build_guide,
    count_free_parameters,
    expected_num_parameters,
)
from scalabl_pyro.program.objectives import make_elbo

SITES = ("s.layer0", "s.layer1", "s.layer2")
R, D, N = 2, 6, 12
NOISE, PRIOR = 0.5, 1.0
LOW_RANK = 4


@pytest.fixture(autouse=True)
def _float64_module_local():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with pyro.settings.context(module_local_params=True):  # restored for later tests
            yield
    finally:
        torch.set_default_dtype(old)


def _problem():
    gen = torch.Generator().manual_seed(0)
    mix = torch.eye(D) + 0.4 * torch.ones(D, D)  # correlated columns -> correlated sites
    x = 0.5 * torch.randn(N, D, generator=gen, dtype=torch.float64) @ mix
    s_true = torch.randn(D, generator=gen, dtype=torch.float64)
    y = x @ s_true + NOISE * torch.randn(N, generator=gen, dtype=torch.float64)
    return x, y


def _conjugate_model(x, y, prior: bool):
    def model():
        parts = []
        for name in SITES:
            if prior:
                d = dist.Normal(torch.zeros(R), PRIOR).to_event(1)
            else:  # as ScalaBLModel.prior with prior_scale=None
                d = dist.ImproperUniform(constraints.real, (), (R,))
            parts.append(pyro.sample(name, d))
        s = torch.cat(parts, dim=-1)  # (D,) or (particles, 1, D)
        with pyro.plate("data", N):
            pyro.sample("y", dist.Normal((s * x).sum(-1), NOISE), obs=y)

    return model


def _exact(x, y):
    precision = torch.eye(D) / PRIOR**2 + x.T @ x / NOISE**2
    cov = torch.linalg.inv(precision)
    mean = cov @ x.T @ y / NOISE**2
    return mean, cov, precision


def _fit(family: str, model, steps: int = 300):
    init = {n: torch.zeros(R) for n in SITES}
    guide = build_guide(family, model, init, init_scale=0.1, low_rank=LOW_RANK)
    guide()
    point = family in ("delta", "mle")
    loss_fn = make_elbo(family, num_particles=1 if point else 128)(model, guide)
    opt = torch.optim.Adam(guide.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.0025 ** (k / steps))
    pyro.set_rng_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        sched.step()
    return guide


def _site_blocks(matrix):
    return [matrix[i * R : (i + 1) * R, i * R : (i + 1) * R] for i in range(len(SITES))]


def _median(guide):
    with torch.no_grad():
        med = guide.median()
    return torch.cat([med[n] for n in SITES])


def test_problem_has_cross_site_correlation():
    x, y = _problem()
    _, cov, precision = _exact(x, y)
    corr = cov / torch.sqrt(torch.outer(cov.diagonal(), cov.diagonal()))
    off_block = corr[:R, R:].abs().max()
    assert off_block > 0.3
    # so the mean-field / block optima really differ from the marginals
    assert not torch.allclose(1 / precision.diagonal(), cov.diagonal(), rtol=0.2)


def test_full_rank_recovers_exact_posterior():
    x, y = _problem()
    mean, cov, _ = _exact(x, y)
    guide = _fit("full_rank", _conjugate_model(x, y, prior=True))
    with torch.no_grad():
        post = guide.get_posterior()
        torch.testing.assert_close(post.loc, mean, atol=0.02, rtol=0)
        torch.testing.assert_close(post.covariance_matrix, cov, atol=0.05 * cov.abs().max(), rtol=0)
    torch.testing.assert_close(_median(guide), mean, atol=0.02, rtol=0)


def test_mean_field_recovers_mean_and_mean_field_variances():
    x, y = _problem()
    mean, _, precision = _exact(x, y)
    guide = _fit("mean_field", _conjugate_model(x, y, prior=True))
    with torch.no_grad():
        locs, scales = zip(*(guide._get_loc_and_scale(n) for n in SITES), strict=True)
    torch.testing.assert_close(torch.cat(locs), mean, atol=0.02, rtol=0)
    # KL(q||p)-optimal mean-field variances are 1 / diag(precision), not diag(Sigma)
    torch.testing.assert_close(torch.cat(scales) ** 2, 1 / precision.diagonal(), rtol=0.1, atol=0)


def test_block_recovers_mean_and_within_site_blocks():
    x, y = _problem()
    mean, cov, precision = _exact(x, y)
    guide = _fit("block", _conjugate_model(x, y, prior=True))
    torch.testing.assert_close(_median(guide), mean, atol=0.02, rtol=0)
    # block-independent optimum: each site's covariance is inv(precision block)
    targets = [torch.linalg.inv(p) for p in _site_blocks(precision)]
    with torch.no_grad():
        for name, target, marginal in zip(SITES, targets, _site_blocks(cov), strict=True):
            scale = guide.scales.s.__getattr__(name[2:])
            tril = guide.scale_trils.s.__getattr__(name[2:])
            factor = scale[:, None] * tril  # Pyro's AutoStructured "mvn": aux @ tril.T * scale
            got = factor @ factor.T
            torch.testing.assert_close(got, target, atol=0.1 * target.abs().max(), rtol=0)
            assert (got - marginal).abs().max() > 0.2 * target.abs().max()  # not the marginal
            assert got[0, 1].abs() > 0.2 * got.diagonal().min()  # a real within-site correlation


def test_low_rank_recovers_mean_and_approximate_covariance():
    x, y = _problem()
    mean, cov, _ = _exact(x, y)
    guide = _fit("low_rank", _conjugate_model(x, y, prior=True))
    with torch.no_grad():
        post = guide.get_posterior()
        torch.testing.assert_close(post.loc, mean, atol=0.02, rtol=0)
        rel = torch.linalg.norm(post.covariance_matrix - cov) / torch.linalg.norm(cov)
        assert rel < 0.2
        assert post.cov_factor.shape == (D, LOW_RANK)


def test_delta_finds_map_and_mle_finds_least_squares():
    x, y = _problem()
    mean, _, _ = _exact(x, y)
    least_squares = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    assert (least_squares - mean).abs().max() > 0.1  # the prior matters here
    delta = _fit("delta", _conjugate_model(x, y, prior=True), steps=500)
    torch.testing.assert_close(_median(delta), mean, atol=1e-3, rtol=0)  # MAP = posterior mean
    mle = _fit("mle", _conjugate_model(x, y, prior=False), steps=500)
    torch.testing.assert_close(_median(mle), least_squares, atol=1e-3, rtol=0)


# --------------------------------------------------------------- parameter counts


def test_expected_counts_formula():
    # The paper's count: 65 adapted layers x rank 8 -> 2 * 520 = 1040 mean-field parameters.
    assert expected_num_parameters("mean_field", 65, 8) == 1040
    d = 65 * 8
    assert expected_num_parameters("full_rank", 65, 8) == d + d * (d + 1) // 2
    assert expected_num_parameters("low_rank", 65, 8, low_rank=3) == d * 5
    assert expected_num_parameters("block", 65, 8) == 65 * (16 + 36)
    assert expected_num_parameters("delta", 65, 8) == expected_num_parameters("mle", 65, 8) == d
    with pytest.raises(ScalaBLError, match="unknown guide family"):
        expected_num_parameters("laplace", 65, 8)


def _effective_count(guide) -> int:
    """Storage entries that actually move a constrained parameter (independent count)."""
    total = 0
    for name, raw in guide.named_parameters():
        path, leaf = name.rsplit(".", 1) if "." in name else ("", name)
        owner = guide
        for part in filter(None, path.split(".")):
            owner = getattr(owner, part)
        value = (
            getattr(owner, leaf[: -len("_unconstrained")])
            if leaf.endswith("_unconstrained")
            else raw
        )
        weights = torch.randn(
            value.shape, generator=torch.Generator().manual_seed(0), dtype=value.dtype
        )
        (grad,) = torch.autograd.grad((value * weights).sum(), raw)
        total += int(torch.count_nonzero(grad))
    return total


@pytest.mark.parametrize("family", GUIDE_FAMILIES)
def test_free_parameter_counts_on_tiny_model(family):
    torch.set_default_dtype(torch.float32)
    sbl = make_scalabl(guide=family, rank=4, guide_rank=3)
    num_layers = len(sbl.model.site_names)
    assert num_layers == 4  # q_proj, v_proj in 2 layers
    want = expected_num_parameters(family, num_layers, 4, low_rank=3)
    assert count_free_parameters(sbl.guide) == want
    assert sbl.num_variational_parameters == want
    assert _effective_count(sbl.guide) == want
    if family == "mean_field":
        assert want == 2 * 4 * num_layers


def test_build_guide_errors():
    model = _conjugate_model(*_problem(), prior=True)
    init = {n: torch.zeros(R) for n in SITES}
    with pytest.raises(ScalaBLError, match="unknown guide family"):
        build_guide("laplace", model, init)
    with pytest.raises(ScalaBLError, match="guide_rank"):
        build_guide("low_rank", model, init, low_rank=0)


def test_guides_start_at_the_init_values():
    model = _conjugate_model(*_problem(), prior=True)
    init = {n: torch.arange(R, dtype=torch.float64) + i + 0.5 for i, n in enumerate(SITES)}
    for family in GUIDE_FAMILIES:
        m = _conjugate_model(*_problem(), prior=family != "mle") if family == "mle" else model
        guide = build_guide(family, m, init, init_scale=0.01)
        guide()
        torch.testing.assert_close(_median(guide), torch.cat([init[n] for n in SITES]))
