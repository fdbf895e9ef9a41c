"""The ScalaBL Pyro program: sites, prior, scaled likelihood, sample folding, BMA limit."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample
from scalabl_testutils import make_scalabl, randomize_lora, toy_dataset

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.predict import draw_latents, predict
from scalabl_pyro.program.objectives import LikelihoodMonitor

FORMATS = [
    pytest.param(dict(task_format="choice"), id="choice"),
    pytest.param(
        dict(task_format="letter", target_modules=("q_proj", "v_proj", "lm_head")), id="letter-head"
    ),
]


def _setup(seed: int = 1, **config):
    sbl = make_scalabl(**config)
    randomize_lora(sbl.subspace, seed=seed)
    data = toy_dataset(6)
    fmt = sbl.format_for(data)
    batch = fmt.encode(list(data)[:4], indices=[0, 1, 2, 3])
    return sbl, data, fmt, batch


def _random_latents(sbl, lead=(), seed=5):
    gen = torch.Generator().manual_seed(seed)
    r = sbl.subspace.rank
    return {n: 1.0 + torch.randn((*lead, r), generator=gen) for n in sbl.model.site_names}


@pytest.mark.parametrize("config", FORMATS)
def test_sites_prior_and_scaled_likelihood(config):
    sbl, data, _, batch = _setup(prior_scale=0.7, **config)
    model = sbl.model
    model.num_data = len(data)
    with LikelihoodMonitor() as monitor:
        tr = poutine.trace(model).get_trace(batch, batch.labels)
    latent_sites = [
        n
        for n, s in tr.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]
    assert latent_sites == model.site_names
    assert all(n.startswith("s.") for n in latent_sites)
    for n in latent_sites:
        site = tr.nodes[n]
        assert site["value"].shape == (sbl.subspace.rank,)
        assert site["fn"].event_shape == (sbl.subspace.rank,)
    obs = tr.nodes["obs"]
    assert obs["is_observed"] and obs["scale"] == pytest.approx(6 / 4)
    assert torch.equal(obs["value"], batch.labels)
    tr.compute_log_prob()
    latents = {n: tr.nodes[n]["value"] for n in latent_sites}
    scores = model.scores(batch, latents)
    torch.testing.assert_close(tr.nodes["class_scores"]["value"], scores)
    # hand-written log joint: N(0, 0.7^2) prior + (N/B) * categorical log-likelihood
    sp = 0.7
    log_prior = sum(
        (-0.5 * (v / sp) ** 2 - math.log(sp) - 0.5 * math.log(2 * math.pi)).sum()
        for v in latents.values()
    )
    ll = torch.log_softmax(scores, -1).gather(1, batch.labels[:, None]).sum()
    torch.testing.assert_close(tr.log_prob_sum(), log_prior + 6 / 4 * ll)
    # what the trainer logs is read off the same program: the mean per-example log-likelihood
    assert monitor.mean_log_likelihood == pytest.approx(float(ll) / 4, rel=1e-5)
    # without labels the program draws them (the posterior predictive)
    free = poutine.trace(poutine.condition(model, data=latents)).get_trace(batch)
    assert not free.nodes["obs"]["is_observed"] and free.nodes["obs"]["value"].shape == (4,)


def test_scores_match_full_model_logits():
    """Letter scores are answer-token logits; choice scores sum (or average) answer log-probs."""
    sbl, data, fmt, batch = _setup(task_format="letter")
    s = _random_latents(sbl)
    scores = sbl.model.scores(batch, s)
    with torch.no_grad(), sbl.subspace.use(s):
        logits = sbl.subspace.peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits
    expected = logits[:, -1, batch.class_token_ids].masked_fill(~batch.class_mask, -math.inf)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert torch.isinf(scores[:, 3:]).all() and torch.isfinite(scores[:, :3]).all()

    for normalization in ("sum", "mean", "byte"):
        sbl, data, fmt, batch = _setup(task_format="choice", normalization=normalization)
        scores = sbl.model.scores(batch, s)
        with torch.no_grad(), sbl.subspace.use(s):
            logits = sbl.subspace.peft_model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits
        logp = torch.log_softmax(logits.double(), -1)
        for row in range(batch.num_rows):
            pos = torch.nonzero(batch.target_mask[row]).flatten().tolist()
            want = sum(logp[row, p - 1, batch.input_ids[row, p]] for p in pos)
            if normalization != "sum":  # per token, or per UTF-8 byte of the answer text
                ex, ch = int(batch.row_example[row]), int(batch.row_choice[row])
                text = " " + data.examples[ex].choices[ch].strip()
                want = want / (len(pos) if normalization == "mean" else len(text.encode()))
            ex, ch = batch.row_example[row], batch.row_choice[row]
            assert scores[ex, ch].item() == pytest.approx(want.item(), abs=1e-4)


@pytest.mark.parametrize("config", FORMATS)
def test_folded_samples_equal_separate_passes(config):
    sbl, _, _, batch = _setup(**config)
    model = sbl.model
    with torch.no_grad():
        stacked = _random_latents(sbl, lead=(3,))
        folded = model.scores(batch, stacked)
        assert folded.shape == (3, batch.batch_size, batch.num_classes)
        separate = torch.stack(
            [model.scores(batch, {k: v[i] for k, v in stacked.items()}) for i in range(3)]
        )
        torch.testing.assert_close(folded, separate, atol=1e-5, rtol=1e-5)
        assert (separate[0] - separate[1]).abs().nan_to_num().max() > 1e-3
        # Pyro's vectorised particle plate shape (S, 1, r) -> (S, B, C)
        plate_shaped = {k: v[:, None] for k, v in stacked.items()}
        torch.testing.assert_close(
            model.scores(batch, plate_shaped), separate, atol=1e-5, rtol=1e-5
        )
        # several leading dims (samples x particles) fold too
        grid = {k: v.reshape(1, 3, 1, -1).expand(2, 3, 1, -1) for k, v in stacked.items()}
        out = model.scores(batch, grid)
        assert out.shape == (2, 3, batch.batch_size, batch.num_classes)
        torch.testing.assert_close(out[1], separate, atol=1e-5, rtol=1e-5)


def test_vectorized_particles_with_point_guide_equal_one_particle():
    sbl, data, _, batch = _setup(guide="delta")
    sbl.model.num_data = len(data)
    # labels observed: without them ``obs`` is sampled and the ELBO is random (which made
    # this test pass or fail with the global RNG state, i.e. with the tests run before it)
    one = Trace_ELBO(num_particles=1, max_plate_nesting=1)(sbl.model, sbl.guide)(
        batch, batch.labels
    )
    many = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)(
        sbl.model, sbl.guide
    )(batch, batch.labels)
    torch.testing.assert_close(many, one, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("family", ["mean_field", "full_rank", "block"])
def test_bma_equals_mean_prediction_as_posterior_scale_vanishes(family):
    data = toy_dataset(6)
    results = {}
    for init_scale in (1e-6, 1.0):
        sbl = make_scalabl(
            guide=family,
            init_scale=init_scale,
            task_format="letter",
            target_modules=("q_proj", "v_proj", "lm_head"),
        )
        randomize_lora(sbl.subspace)
        bma = sbl.predict(data, num_samples=4, mode="bma", progress=False)
        mean = sbl.predict(data, mode="mean", progress=False)
        assert bma.num_samples == 4 and mean.num_samples == 1
        results[init_scale] = np.abs(bma.probs - mean.probs).max()
        if init_scale < 1e-3:
            np.testing.assert_allclose(bma.probs, mean.probs, atol=1e-5)
            np.testing.assert_allclose(
                bma.sample_log_probs, np.repeat(mean.sample_log_probs, 4, 0), atol=1e-4
            )
    assert results[1.0] > 1e-2  # with a real posterior width the BMA does differ


def test_predict_is_the_probability_average_of_the_samples():
    sbl, data, fmt, _ = _setup()
    pred = predict(sbl.model, sbl.guide, fmt, data, num_samples=5, batch_size=4, progress=False)
    assert pred.sample_log_probs.shape == (5, len(data), 3)
    expected = np.exp(pred.sample_log_probs).mean(axis=0)
    np.testing.assert_allclose(pred.probs, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, atol=1e-10)
    # the draws are the guide's, in order, and chunking the samples changes nothing
    latents = draw_latents(sbl.model, sbl.guide, 5, seed=0)
    assert all(v.shape == (5, sbl.subspace.rank) for v in latents.values())
    again = predict(
        sbl.model, sbl.guide, fmt, data, latents=latents, batch_size=3, max_rows=7, progress=False
    )
    np.testing.assert_allclose(again.sample_log_probs, pred.sample_log_probs, atol=1e-5)
    for i in range(5):
        one = {k: v[i] for k, v in latents.items()}
        batch = fmt.encode(list(data))
        lp = torch.log_softmax(sbl.model.scores(batch, one).double(), -1).detach().numpy()
        np.testing.assert_allclose(pred.sample_log_probs[i], lp, atol=1e-5)
    np.testing.assert_array_equal(pred.labels, [e.label for e in data])


def test_prior_options_and_errors():
    sbl, data, _, batch = _setup(guide="mle")
    assert sbl.model.prior_scale is None
    prior = sbl.model.prior(sbl.model.site_names[0])
    assert isinstance(prior, dist.ImproperUniform)
    assert prior.event_shape == (sbl.subspace.rank,)
    assert float(prior.log_prob(torch.randn(sbl.subspace.rank))) == 0.0
    with pytest.raises(ScalaBLError, match="prior_scale"):
        make_scalabl(prior_scale=0.0)
    fixed = {n: torch.ones(sbl.subspace.rank) for n in sbl.model.site_names}
    sbl.model.num_data = 2
    with pytest.raises(ScalaBLError, match="num_data"):
        poutine.condition(sbl.model, data=fixed)(batch)
    sbl.model.num_data = None  # defaults to the batch: no scaling
    tr = poutine.trace(poutine.condition(sbl.model, data=fixed)).get_trace(batch)
    assert tr.nodes["obs"]["scale"] == 1.0
    latents = poutine.condition(sbl.model, data=fixed)()  # no batch: just the latents
    assert list(latents) == sbl.model.site_names


@pytest.mark.parametrize(
    "family", ["mean_field", "log_mean_field", "full_rank", "low_rank", "block", "delta"]
)
def test_draw_latents_returns_exactly_the_model_sites(family):
    sbl = make_scalabl(guide=family, init_scale=0.1)
    draws = draw_latents(sbl.model, sbl.guide, 3, seed=0)
    assert list(draws) == sbl.model.site_names  # no auxiliary sites (e.g. block's <name>_aux)
    assert all(v.shape == (3, sbl.subspace.rank) for v in draws.values())
    again = draw_latents(sbl.model, sbl.guide, 3, seed=0)
    assert all(torch.equal(draws[k], again[k]) for k in draws)
    if family != "delta":
        assert not torch.equal(draws[sbl.model.site_names[0]][0], draws[sbl.model.site_names[0]][1])


def test_width_moves_draws_from_the_mean_and_widens_the_predictive():
    """width = 1 is the fitted posterior, 0 its mean; wider draws raise the mutual information."""
    from scalabl_pyro.evaluation.metrics import uncertainty_decomposition

    sbl = make_scalabl(init_scale=0.3)
    randomize_lora(sbl.subspace)
    data = toy_dataset(6)
    kw = dict(num_samples=4, seed=3, progress=False)
    plain = sbl.predict(data, **kw)
    np.testing.assert_allclose(sbl.predict(data, width=1.0, **kw).probs, plain.probs)
    at_zero = sbl.predict(data, width=0.0, **kw)
    mean = sbl.predict(data, mode="mean", progress=False)
    np.testing.assert_allclose(
        at_zero.sample_log_probs, np.repeat(mean.sample_log_probs, 4, 0), atol=1e-5
    )
    mi = [
        uncertainty_decomposition(
            np.exp(sbl.predict(data, width=k, **kw).sample_log_probs)
        ).epistemic.mean()
        for k in (1.0, 3.0)
    ]
    assert mi[1] > 2 * mi[0] > 0


@pytest.mark.parametrize(
    "config, kw, words",
    [
        ({"guide": "mle"}, {"width": 2.0}, "does not have"),
        ({}, {"width": -1.0}, "finite number >= 0"),
        ({}, {"width": 2.0, "mode": "mean"}, "use mode='bma'"),
    ],
)
def test_width_refusals_name_the_fix(config, kw, words):
    sbl = make_scalabl(**config)
    with pytest.raises(ScalaBLError, match=words):
        sbl.predict(toy_dataset(2), progress=False, **kw)
