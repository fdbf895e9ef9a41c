"""The official recipe (objective='reference'), formula by formula against hand computation."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger
from scalabl_testutils import make_scalabl, randomize_lora, toy_dataset

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.cli import main
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.train import TrainConfig, Trainer
from scalabl_pyro.program.guides import AutoLogMeanField
from scalabl_pyro.program.objectives import blob_cyclic_weight, gaussian_kl, reverse_kl
from scalabl_pyro.testing import tiny_model_and_tokenizer


def _trainer(steps: int = 8, **config) -> tuple[Trainer, object]:
    sbl = make_scalabl(guide="log_mean_field", **config)
    randomize_lora(sbl.subspace)
    data = toy_dataset(8)
    tcfg = TrainConfig(steps=steps, objective="reference", batch_size=2, lr=1e-4, progress=False)
    trainer = Trainer(
        sbl.model, sbl.guide, "log_mean_field", sbl.format_for(data), data, tcfg, sbl.device
    )
    return trainer, sbl


def test_reference_defaults_follow_the_official_code():
    cfg = TrainConfig(objective="reference")
    assert cfg.lr == TrainConfig().lr and cfg.resolved_var_lr == cfg.lr  # one AdamW rate
    assert TrainConfig.official().lr == 1e-4  # the official code's rate is the recipe's default
    assert TrainConfig.official(lr=1e-3).lr == 1e-3
    assert cfg.resolved_adam_eps == 1e-6 and cfg.max_grad_norm is None
    assert cfg.resolved_kl_schedule == "cyclic" and cfg.reference_kl_lr == 0.2
    elbo = TrainConfig()
    assert elbo.resolved_var_lr == 10 * elbo.lr and elbo.resolved_adam_eps == 1e-8
    assert elbo.resolved_kl_schedule == "constant"
    # a full-weight constant reverse-KL step each batch is what blew up: refused
    for kind in ("constant", "linear"):
        with pytest.raises(ScalaBLError, match="cyclic"):
            TrainConfig(objective="reference", kl_schedule=kind)
    trainer, _ = _trainer()
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert all(g["eps"] == 1e-6 and g["initial_lr"] == 1e-4 for g in trainer.optimizer.param_groups)
    assert isinstance(trainer.kl_optimizer, torch.optim.SGD)


def test_adamw_factor_is_the_official_t_over_wu_and_warmup_truncates():
    """AdamW at step t runs at t / WU, then (T - t) / (T - WU); WU = int(0.06 T)."""
    trainer, _ = _trainer(steps=60)
    assert trainer.warmup_steps == 3  # int(3.6); the ELBO path keeps round(3.6) = 4
    assert TrainConfig(steps=60).warmup_steps == 4
    seen = []
    for _ in range(6):
        seen.append((trainer.schedule_factor(), trainer.kl_lr_factor()))
        rec = trainer.step()
        assert rec.lr == pytest.approx(1e-4 * seen[-1][0])  # the recorded lr is AdamW's
    want_adam = [1 / 3, 2 / 3, 1.0, 56 / 57, 55 / 57, 54 / 57]
    want_kl = [0.0, 1 / 3, 2 / 3, 1.0, 56 / 57, 55 / 57]
    assert [a for a, _ in seen] == pytest.approx(want_adam)
    assert [k for _, k in seen] == pytest.approx(want_kl)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 53 / 57)


def test_elbo_schedule_is_unchanged():
    """The default objective keeps get_linear_schedule_with_warmup with round(0.06 T)."""
    sbl = make_scalabl()
    data = toy_dataset(8)
    tcfg = TrainConfig(steps=60, batch_size=2, progress=False)
    trainer = Trainer(
        sbl.model, sbl.guide, "mean_field", sbl.format_for(data), data, tcfg, sbl.device
    )
    factors = []
    for _ in range(5):
        factors.append(trainer.schedule_factor())
        trainer.step()
    assert factors == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_num_particles_is_refused_with_the_reference_objective():
    with pytest.raises(ScalaBLError, match="num_particles=1 or objective='elbo'"):
        TrainConfig(objective="reference", num_particles=2)
    with pytest.raises(ScalaBLError, match="num_particles"):
        TrainConfig.official(num_particles=4)
    sbl = make_scalabl(guide="log_mean_field")
    with pytest.raises(ScalaBLError, match="num_particles"):
        sbl.fit(toy_dataset(4), dict_config(objective="reference", num_particles=2))


def dict_config(**kw):
    """A TrainConfig built as fit's callers do (the refusal happens in the constructor)."""
    return TrainConfig(steps=1, batch_size=2, progress=False, **kw)


def test_official_configs_set_the_whole_recipe_and_refuse_contradictions():
    m = ScalaBLConfig.official()
    assert (m.guide, m.method, m.task_format) == ("log_mean_field", "scalabl", "letter")
    assert m.reference_prior_quirk and m.prior_scale == 1.0 and m.lora_dropout == 0.0
    assert m.alpha == 16.0 and m.rank == 8 and m.initial_scale == 0.05
    assert m.target_modules == ("q_proj", "v_proj", "lm_head")
    assert ScalaBLConfig.official(rank=4).alpha == 8.0  # alpha = 2r follows the rank
    t = TrainConfig.official(steps=10)
    assert (t.objective, t.partial_last_batch, t.bf16) == ("reference", True, False)
    assert t.resolved_kl_schedule == "cyclic" and t.resolved_adam_eps == 1e-6
    with pytest.raises(ScalaBLError, match="sets guide='log_mean_field'.*drop guide"):
        ScalaBLConfig.official(guide="mean_field")
    with pytest.raises(ScalaBLError, match="alpha"):
        ScalaBLConfig.official(rank=4, alpha=16)
    with pytest.raises(ScalaBLError, match="target_modules"):
        ScalaBLConfig.official(target_modules=("q_proj", "v_proj"))
    with pytest.raises(ScalaBLError, match="task_format"):
        ScalaBLConfig.official(task_format="choice")
    with pytest.raises(ScalaBLError, match="objective='reference'.*drop objective"):
        TrainConfig.official(objective="elbo")
    with pytest.raises(ScalaBLError, match="bf16"):
        TrainConfig.official(bf16=True)


def test_partial_last_batch_keeps_each_epochs_remainder():
    from scalabl_pyro.inference.train import batch_indices

    batches = [batch_indices(5, 2, 0, k, partial_last_batch=True) for k in range(6)]
    assert [len(b) for b in batches] == [2, 2, 1, 2, 2, 1]
    assert sorted(sum(batches[:3], [])) == list(range(5))  # one epoch: each example once
    assert sorted(sum(batches[3:], [])) == list(range(5))
    # the default stream (full batches across epochs) is unchanged
    assert [len(batch_indices(5, 2, 0, k)) for k in range(6)] == [2] * 6


def test_log_parameters_positive_mean_and_uniform_initial_scales():
    sbl = make_scalabl(guide="log_mean_field", init_scale=0.05)
    assert isinstance(sbl.guide, AutoLogMeanField)
    names = [n for n, _ in sbl.guide.named_parameters()]
    assert names and all(n.startswith(("log_locs.", "log_scales.")) for n in names)
    scales = torch.cat([sbl.guide._get_loc_and_scale(n)[1] for n in sbl.model.site_names])
    assert float(scales.min()) >= 0.05 / math.sqrt(2) - 1e-7 and float(scales.max()) <= 0.05
    assert float(scales.std()) > 1e-3  # drawn, not constant
    locs = sbl.posterior_mean()
    for name, init in sbl.subspace.init_values.items():
        torch.testing.assert_close(locs[name], init)  # exp(log S) = S
    assert sbl.num_variational_parameters == 2 * sbl.subspace.num_latents


def test_kl_step_is_sgd_at_02_times_schedule_factor_on_pi_times_reverse_kl():
    trainer, sbl = _trainer(steps=8)
    params = trainer.variational_params
    seen = []
    real = trainer.kl_optimizer.step

    def record():
        before = [p.detach().clone() for p in params]
        grads = [p.grad.detach().clone() for p in params]
        lr = trainer.kl_optimizer.param_groups[0]["lr"]
        # the gradient the KL step follows, computed independently at these parameters
        for p in params:
            p.grad = None
        kl = reverse_kl(sbl.model, sbl.guide)
        want = torch.autograd.grad(kl, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        real()
        seen.append((lr, before, grads, want, [p.detach().clone() for p in params]))

    trainer.kl_optimizer.step = record  # instrument this instance only (test code)
    for t in range(1, 4):
        factor = trainer.kl_lr_factor()
        # T = 8: no warm-up (int(0.48) = 0), so the decay (T - (t - 1)) / T, not shifted
        assert factor == pytest.approx((8 - (t - 1)) / 8)
        trainer.step()
        lr, before, grads, want, after = seen[-1]
        pi = blob_cyclic_weight(t, 8, 2, elbo_scaled=False)
        assert trainer.history.steps[-1].kl_weight == pytest.approx(pi)
        assert lr == pytest.approx(0.2 * factor)
        for b, g, w, a in zip(before, grads, want, after, strict=True):
            torch.testing.assert_close(g, pi * w, rtol=1e-5, atol=1e-12)
            torch.testing.assert_close(a, b - lr * g)


def test_reverse_kl_with_the_prior_quirk_by_hand():
    sbl = make_scalabl(guide="log_mean_field", reference_prior_quirk=True, prior_scale=1.0)
    u = sbl.subspace.initial_scales(sbl.config.initial_scale, sbl.config.seed)
    total = 0.0
    for name in sbl.model.site_names:
        mu, sigma = sbl.guide._get_loc_and_scale(name)
        # the guide's initial sigma is the prior's mean: the official aliasing
        torch.testing.assert_close(sigma, u[name])
        prior = sbl.model.prior(name).base_dist
        torch.testing.assert_close(prior.loc, u[name])
        torch.testing.assert_close(prior.scale, 1 + u[name])
        m, s = mu.double(), sigma.double()
        pm, ps = u[name].double(), 1 + u[name].double()
        total += float((torch.log(s / ps) + (ps**2 + (pm - m) ** 2) / (2 * s**2) - 0.5).sum())
    assert float(reverse_kl(sbl.model, sbl.guide)) == pytest.approx(total, rel=1e-5)
    plain = make_scalabl(guide="log_mean_field")
    assert float(reverse_kl(plain.model, plain.guide)) != pytest.approx(total, rel=1e-4)
    # gaussian_kl is the textbook formula
    assert float(gaussian_kl(torch.tensor(0.0), torch.tensor(1.0), 0.0, 1.0)) == 0.0


def test_reference_training_stays_finite_and_keeps_the_posterior_bounded():
    """12 steps at the recipe's lr 1e-4 move sigma by ~1e-6, so only bounds are asserted.

    (The widening itself shows on real data: std/|mu| reaches ~1 once the cyclic weight
    peaks, docs/calibration.md. An earlier ``s1 > s0`` check here was a knife edge that
    flipped with the choice-score normalisation.)
    """
    trainer, sbl = _trainer(steps=12)
    s0 = torch.cat([sbl.guide._get_loc_and_scale(n)[1] for n in sbl.model.site_names])
    for _ in range(12):
        rec = trainer.step()
        assert math.isfinite(rec.loss) and rec.kl >= 0
    s1 = torch.cat([sbl.guide._get_loc_and_scale(n)[1] for n in sbl.model.site_names])
    mu = torch.cat([sbl.posterior_mean()[n] for n in sbl.model.site_names])
    assert bool((mu > 0).all())  # the mean stays positive by construction
    assert float(s1.min()) > 0.5 * float(s0.min())  # no collapse
    assert float(s1.max()) < 5.0  # no blow-up (the constant-weight recipe reached ~50)


# --------------------------------------------------------------------------------------
# The official update rule, written out step for step, against the library's trajectory
# --------------------------------------------------------------------------------------


class _FixedNoise(Messenger):
    """Test-only: the guide's draw of each site is ``loc + scale * eps[site]`` (reparameterised).

    A site whose value is still unset is the guide's own draw (the model's copy is
    replayed from the guide trace, so it arrives with its value already set).
    """

    def __init__(self, eps: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.eps, self.used = eps, set()

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["value"] is None and msg["name"] in self.eps:
            normal = msg["fn"].base_dist
            msg["value"] = normal.loc + normal.scale * self.eps[msg["name"]]
            self.used.add(msg["name"])


def _official_model(rank: int = 4):
    model, tok = tiny_model_and_tokenizer()
    cfg = ScalaBLConfig.official(base_model="tiny-llama", rank=rank, num_classes=3)
    sbl = ScalaBL(cfg, model, tok)
    randomize_lora(sbl.subspace)  # B != 0, so s matters from the first step
    return sbl


def test_sixty_official_steps_equal_the_library_trajectory():
    """60 steps of the official update rule, written out here, match the library to 1e-6.

    N = 4 examples in batches of b = 3 (each epoch: a batch of 3, then the partial batch
    of 1), so BLoB's cycle is M = floor(100 * 4^(pi/8) / 3) = 57 steps: the KL weight
    peaks at step 57 (pi = 2^57 / (2^58 - 1) ~ 1/2) and a new cycle starts at 58. The
    posterior noise eps is fixed by the test and given to both. T = 60, so the warm-up
    is int(0.06 T) = 3 steps (round would give 4).
    """
    n, b, steps, lr, kl_lr = 4, 3, 60, 5e-3, 0.2
    data = toy_dataset(n)
    lib, twin = _official_model(), _official_model()
    names = lib.model.site_names
    rank = lib.subspace.rank
    gen = torch.Generator().manual_seed(123)
    noise = [{s: torch.randn(rank, generator=gen) for s in names} for _ in range(steps)]

    # ---- the library: TrainConfig.official(), each step under the step's fixed noise
    tcfg = TrainConfig.official(steps=steps, batch_size=b, lr=lr, progress=False)
    fmt = lib.format_for(data)
    trainer = Trainer(lib.model, lib.guide, "log_mean_field", fmt, data, tcfg, lib.device)
    lib_traj = []
    for t in range(1, steps + 1):
        with _FixedNoise(noise[t - 1]) as fixed:
            trainer.step()
        assert fixed.used == set(names)  # every site was drawn with the test's noise
        lib_traj.append(_snapshot(lib.subspace.lora_parameters(), lib.guide, names))

    # ---- the official rule, by hand, on an identical twin
    wu = int(0.06 * steps)  # the official code truncates
    m = math.floor(100 * n ** (math.pi / 8) / b)  # BLoB's cycle length
    assert (wu, m) == (3, 57)

    def factor(t: int) -> float:  # the official schedule's factor at (1-based) step t
        return t / wu if t < wu else (steps - t) / (steps - wu)

    lora = twin.subspace.lora_parameters()
    log_mu = {s: twin.posterior_mean()[s].log().detach().clone().requires_grad_() for s in names}
    u = twin.subspace.initial_scales(twin.config.initial_scale, twin.config.seed)
    log_sigma = {s: u[s].log().clone().requires_grad_() for s in names}
    prior_mu = {s: u[s].clone() for s in names}  # the official aliasing: N(u, (1 + u)^2)
    prior_sigma = {s: 1 + u[s] for s in names}
    variational = [*log_mu.values(), *log_sigma.values()]
    adamw = torch.optim.AdamW([*lora, *variational], lr=lr, eps=1e-6, weight_decay=0.0)
    twin_fmt = twin.format_for(data)
    per_epoch = math.ceil(n / b)  # drop_last=False: the partial batch is kept
    for t in range(1, steps + 1):
        epoch, k = divmod(t - 1, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0 * 7919 + epoch))
        idx = order.tolist()[k * b : (k + 1) * b]
        assert len(idx) == (b if k == 0 else n - b)
        batch = twin_fmt.encode([data[i] for i in idx], indices=idx)
        # 1. AdamW on the batch's mean NLL under one draw s = mu + sigma * eps
        eps = noise[t - 1]
        s = {name: log_mu[name].exp() + log_sigma[name].exp() * eps[name] for name in names}
        nll = F.cross_entropy(twin.model.scores(batch, s), batch.labels)
        for g in adamw.param_groups:
            g["lr"] = lr * factor(t)
        adamw.zero_grad()
        nll.backward()
        adamw.step()
        # 2. SGD on pi_i * KL(prior || posterior) over (log mu, log sigma), lr 0.2 x factor(t-1)
        i = ((t - 1) % m) + 1
        pi = 2.0**i / (2.0 ** (m + 1) - 1)
        kl = 0.0
        for name in names:
            mu, sigma = log_mu[name].exp(), log_sigma[name].exp()
            mp, sp = prior_mu[name], prior_sigma[name]
            kl = (
                kl + (torch.log(sigma / sp) + (sp**2 + (mp - mu) ** 2) / (2 * sigma**2) - 0.5).sum()
            )
        grads = torch.autograd.grad(pi * kl, variational)
        with torch.no_grad():
            for p, g in zip(variational, grads, strict=True):
                p -= kl_lr * factor(t - 1) * g
        twin_state = [p.detach().clone() for p in lora] + [
            v[name].detach().clone() for v in (log_mu, log_sigma) for name in names
        ]
        for a, want in zip(lib_traj[t - 1], twin_state, strict=True):
            torch.testing.assert_close(
                a, want, rtol=0, atol=1e-6, msg=lambda e, t=t: f"step {t}: {e}"
            )

    # the run is not a trivial one: the LoRA factors moved, and the KL peak widened sigma
    sigma_end = torch.cat([log_sigma[s].detach().exp() for s in names])
    assert float(sigma_end.min()) > 2 * float(torch.cat(list(u.values())).max())
    start = _official_model()
    moved = max(
        float((p.detach() - q.detach()).abs().max())
        for p, q in zip(lora, start.subspace.lora_parameters(), strict=True)
    )
    assert moved > 0.05
    assert [r.kl_weight for r in trainer.history.steps][56] == pytest.approx(2**57 / (2**58 - 1))


def _snapshot(lora, guide, names) -> list[torch.Tensor]:
    """LoRA factors, then log mu and log sigma of every site, as the twin lists them."""
    mus = [guide._get_loc_and_scale(s)[0].detach().log() for s in names]
    sigmas = [guide._get_loc_and_scale(s)[1].detach().log() for s in names]
    return [p.detach().clone() for p in lora] + mus + sigmas


# --------------------------------------------------------------------------------------
# One switch: scalabl train --recipe official, the benchmark's "official" method
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("recipe")
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(d / "tiny")
    tok.save_pretrained(d / "tiny")
    rows = [
        {
            "question": f"Which colour is item {i}?",
            "choices": ["red", "blue", "green"],
            "label": i % 3,
        }
        for i in range(5)
    ]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _train_cli(d, *extra: str, output: str = "run") -> tuple[int, str]:
    args = ["train", "--model", str(d / "tiny"), "--data", str(d / "data.jsonl")]
    args += ["--output", str(d / output), "--rank", "2", "--no-progress", *extra]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue()


def test_cli_recipe_official_sets_every_item(tiny_run_dir):
    threads = torch.get_num_threads()
    try:
        code, err = _train_cli(
            tiny_run_dir, "--recipe", "official", "--steps", "3", "--threads", "1"
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)  # the rest of the session keeps its own
    assert code == 0, err
    meta = json.loads((tiny_run_dir / "run" / "scalabl_config.json").read_text())
    cfg, tcfg = meta["config"], meta["train_config"]
    assert cfg["guide"] == "log_mean_field" and cfg["reference_prior_quirk"] is True
    assert cfg["alpha"] == 4.0 and cfg["rank"] == 2  # alpha = 2r
    assert cfg["target_modules"] == ["q_proj", "v_proj", "lm_head"]
    assert cfg["task_format"] == "letter" and cfg["init_scale"] == 0.05
    assert cfg["prior_scale"] == 1.0 and cfg["dropout"] == 0.0
    assert tcfg["objective"] == "reference" and tcfg["partial_last_batch"] is True
    assert tcfg["bf16"] is False and tcfg["num_particles"] == 1


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--guide", "mean_field"], "--recipe official sets --guide itself"),
        (["--objective", "elbo"], "--recipe official sets --objective itself"),
        (["--alpha", "16", "--format", "choice"], "sets --format and --alpha itself"),
        (["--particles", "2"], "--particles"),
        (["--targets", "q_proj,v_proj"], "add lm_head to --targets"),
    ],
)
def test_cli_recipe_official_refuses_what_it_sets(tiny_run_dir, extra, match):
    code, err = _train_cli(tiny_run_dir, "--recipe", "official", *extra, output="refused")
    assert code == 2 and err.count("\n") == 1 and match in err, err
    assert not (tiny_run_dir / "refused").exists()


def test_benchmark_official_method_is_the_recipe():
    from scalabl_pyro.experiments.benchmark import parse_method

    spec = parse_method("official[rank=4,lr=0.01]")
    assert spec.model["alpha"] == 8.0 and spec.model["reference_prior_quirk"] is True
    assert spec.model["guide"] == "log_mean_field" and "lm_head" in spec.model["target_modules"]
    assert spec.train == {**TrainConfig.OFFICIAL, "lr": 0.01}
    with pytest.raises(ScalaBLError, match="drop guide"):
        parse_method("official[guide=mean_field]")
    with pytest.raises(ScalaBLError, match="drop num_particles|num_particles=1"):
        parse_method("official[num_particles=2]")


def test_cli_lets_idle_openmp_threads_sleep_unless_told_otherwise(tiny_run_dir, monkeypatch):
    """Spinning OpenMP threads made two jobs on shared cores ~5x slower (docs/reliability.md)."""
    from scalabl_pyro.inference.train import set_cpu_threads

    data = ["data", "--data", str(tiny_run_dir / "data.jsonl")]
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(data) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's own setting wins
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(data) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    with pytest.raises(ScalaBLError, match="threads must be >= 1"):
        set_cpu_threads(0)
    assert set_cpu_threads(None) == torch.get_num_threads()
