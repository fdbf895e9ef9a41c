"""The OOD protocol's report: bootstrap intervals, the OOD table and the far-OOD bar.

Known answers, no model: the intervals on constructed scores, the table from fake
cells written the way ``cells.py`` writes them, the bar on hand-made summary rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation import metrics, ood
from scalabl_pyro.evaluation.metrics import ood_detection, ood_detection_ci, ood_scores
from scalabl_pyro.experiments.benchmark import (
    FAR_OOD,
    OOD_SHIFTED,
    BenchmarkConfig,
    build_table,
    cell_path,
    cell_rows,
    far_ood_verdict,
    markdown_table,
    ood_columns,
    ood_markdown_table,
    parse_method,
    summarise,
)
from scalabl_pyro.experiments.benchmark.cells import _save_arrays

# --------------------------------------------------------------------------- intervals


def test_the_ood_metrics_are_re_exported_from_metrics():
    for name in ("OODMetrics", "ood_auroc", "ood_aupr", "ood_fpr_at_tpr", "ood_detection"):
        assert getattr(metrics, name) is getattr(ood, name)
    assert metrics.ood_detection_ci is ood.ood_detection_ci


def test_the_interval_holds_the_point_value_and_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def width(n: int) -> tuple[float, float]:
        ci = ood_detection_ci(rng.normal(0, 1, n), rng.normal(1, 1, n), n_boot=500)
        assert ci.auroc_low <= ci.auroc <= ci.auroc_high
        assert ci.fpr_low <= ci.fpr_at_tpr <= ci.fpr_high
        return ci.auroc_high - ci.auroc_low, ci.fpr_high - ci.fpr_low

    small, large = width(60), width(2000)
    assert large[0] < small[0] / 3 and large[1] < small[1] / 2


def test_the_point_values_are_ood_detections():
    rng = np.random.default_rng(1)
    s_in, s_out = rng.normal(0, 1, 300), rng.normal(0.7, 1, 200)
    ci = ood_detection_ci(s_in, s_out, n_boot=200)
    ref = ood_detection(s_in, s_out)
    assert ci.auroc == ref.auroc and ci.fpr_at_tpr == ref.fpr_at_tpr
    assert (ci.n_in, ci.n_out, ci.n_boot, ci.level, ci.tpr_level) == (300, 200, 200, 0.95, 0.95)
    assert ci.to_dict()["auroc_low"] == ci.auroc_low


def test_perfectly_separated_scores_give_a_degenerate_interval():
    ci = ood_detection_ci(np.linspace(0, 1, 50), np.linspace(2, 3, 40))
    assert (ci.auroc, ci.auroc_low, ci.auroc_high) == (1.0, 1.0, 1.0)
    assert (ci.fpr_at_tpr, ci.fpr_low, ci.fpr_high) == (0.0, 0.0, 0.0)


def test_identical_distributions_give_auroc_one_half():
    rng = np.random.default_rng(2)
    drawn = ood_detection_ci(rng.normal(size=3000), rng.normal(size=3000))
    assert drawn.auroc == pytest.approx(0.5, abs=0.03)  # sd about 0.0075 at this size
    assert drawn.fpr_at_tpr == pytest.approx(0.95, abs=0.03)
    x = rng.normal(size=1000)
    same = ood_detection_ci(x, rng.permutation(x))  # the same scores, in another order
    assert same.auroc == 0.5 and same.fpr_at_tpr == pytest.approx(0.95, abs=1e-3)
    assert same.auroc_low < 0.5 < same.auroc_high
    tied = ood_detection_ci(np.zeros(20), np.zeros(30))  # one value: every pair a tie
    assert (tied.auroc, tied.auroc_low, tied.auroc_high) == (0.5, 0.5, 0.5)
    assert (tied.fpr_at_tpr, tied.fpr_low, tied.fpr_high) == (1.0, 1.0, 1.0)


def test_each_replicate_is_the_metric_of_its_resample():
    """The vectorised count form equals the scalar AUROC and FPR95, ties included."""
    rng = np.random.default_rng(3)
    for _ in range(100):
        s_in = rng.integers(0, 5, size=rng.integers(1, 12)).astype(float)
        s_out = rng.integers(0, 5, size=rng.integers(1, 12)).astype(float)
        values, keys = np.unique(np.concatenate([s_in, s_out]), return_inverse=True)
        k_in, k_out = keys[: s_in.size], keys[s_in.size :]
        c_in = np.bincount(k_in, minlength=values.size)[None].astype(float)
        c_out = np.bincount(k_out, minlength=values.size)[None].astype(float)
        for level in (0.5, 0.95, 1.0):
            auroc, fpr = ood._count_stats(c_in, c_out, level)
            assert auroc[0] == pytest.approx(ood._auroc(s_in, s_out), abs=1e-12)
            assert fpr[0] == pytest.approx(ood._fpr_at_tpr(s_in, s_out, level), abs=1e-12)


def test_the_interval_is_deterministic_given_the_seed_and_fast():
    rng = np.random.default_rng(4)
    s_in, s_out = rng.normal(size=500), rng.normal(0.5, 1, 500)
    t0 = time.perf_counter()
    a = ood_detection_ci(s_in, s_out, n_boot=1000, seed=7)
    assert time.perf_counter() - t0 < 1.0
    assert ood_detection_ci(s_in, s_out, n_boot=1000, seed=7) == a
    assert ood_detection_ci(s_in, s_out, n_boot=1000, seed=8) != a


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_boot": 0}, "n_boot is 0"),
        ({"n_boot": 2.5}, "n_boot is 2.5"),
        ({"level": 1.0}, "level is 1.0"),
        ({"seed": -1}, "seed is -1"),
        ({"tpr_level": 0}, "tpr_level is 0"),
        ({"scores_in": []}, "scores_in is empty"),
        ({"scores_out": [[0.1, 0.2]]}, "scores_out has shape"),
        ({"scores_in": [0.1, np.nan]}, "NaN or inf"),
    ],
)
def test_bad_interval_input_is_one_line(kwargs, words):
    args = {"scores_in": [0.1, 0.2], "scores_out": [0.3, 0.4], **kwargs}
    with pytest.raises(ScalaBLError, match=words) as info:
        ood_detection_ci(**args)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- the table


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-12, None)).astype(np.float32)


def _in_dist(s: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Confident draws that agree: max p in [0.85, 0.95], the same in every draw."""
    top = rng.uniform(0.85, 0.95, n)
    p = np.stack([top, *(np.repeat([(1 - top) / 3], 3, axis=0))], axis=-1)
    return np.broadcast_to(p, (s, n, 4)).copy()


def _shifted(s: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unsure draws that disagree: draw k puts 0.4 on class (r + k) mod 4, 0.2 on the rest."""
    p = np.full((s, n, 4), 0.2)
    pick = (rng.integers(0, 4, n)[None] + np.arange(s)[:, None]) % 4
    np.put_along_axis(p, pick[..., None], 0.4, axis=-1)
    return p


def _cell_arrays(s: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 30
    arrays = {
        "selection/slp": _log_probs(_in_dist(s, n, rng)),
        "selection/labels": rng.integers(0, 4, n),
        "report/openbookqa/slp": _log_probs(_in_dist(s, n, rng)),
        "report/openbookqa/labels": rng.integers(0, 4, n),
    }
    for name in OOD_SHIFTED:
        arrays[f"report/{name}/slp"] = _log_probs(_shifted(s, n, rng))
        arrays[f"report/{name}/labels"] = rng.integers(0, 4, n)
    if seed == 1:  # the second seed: one in-distribution question looks shifted
        arrays["report/openbookqa/slp"][:, 0] = arrays["report/arc_easy/slp"][:, 0]
    return arrays


def _meta(seed: int) -> dict:
    return {
        "task": "openbookqa",
        "seed": seed,
        "extra_parameters": 10,
        "train_seconds": 1.0,
        "predict_seconds": {"report/openbookqa": 2.0, "report/arc_easy": 3.0},
        "metrics": {},
    }


def test_ood_columns_per_score_and_mi_only_with_several_draws():
    rng = np.random.default_rng(5)
    slp_in, slp_out = _log_probs(_in_dist(3, 40, rng)), _log_probs(_shifted(3, 40, rng))
    cols = ood_columns(slp_in.astype(np.float64), slp_out.astype(np.float64))
    s_in = ood_scores(np.exp(slp_in.astype(np.float64)))
    s_out = ood_scores(np.exp(slp_out.astype(np.float64)))
    for score in ("max_prob", "entropy", "mutual_information"):
        ci = ood_detection_ci(s_in[score], s_out[score])
        assert cols[f"auroc_{score}"] == ci.auroc == 1.0
        assert (cols[f"auroc_{score}_low"], cols[f"auroc_{score}_high"]) == (1.0, 1.0)
        assert (cols[f"fpr95_{score}"], cols[f"fpr95_{score}_high"]) == (0.0, 0.0)
    assert cols["best_ood_score"] == "max_prob"  # the first of the ties
    one = ood_columns(slp_in[:1].astype(np.float64), slp_out[:1].astype(np.float64))
    assert "auroc_entropy" in one and not any("mutual_information" in k for k in one)


def _write_fake_grid(tmp_path, methods: list[str], seeds: list[int]) -> BenchmarkConfig:
    cfg = BenchmarkConfig(
        methods=methods, seeds=seeds, protocol="ood", output=str(tmp_path / "ood")
    )
    for spec in cfg.specs:
        for seed in seeds:
            path = cell_path(tmp_path / "ood", spec.trained, "openbookqa", seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            s = 1 if spec.name == "mle" else 3
            _save_arrays(path.with_suffix(".npz"), _cell_arrays(s, seed))
            path.write_text(json.dumps(_meta(seed)))
    return cfg


def test_the_ood_table_from_fake_cells(tmp_path):
    cfg = _write_fake_grid(tmp_path, ["mle+ts", "scalabl[samples=3]"], [0])
    result = build_table(cfg)
    text = (tmp_path / "ood" / "ood_table.md").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("OOD detection") and "bootstrap CI" in lines[0]
    assert "mean ± sample std over seeds" in lines[0]
    head = [c.strip() for c in lines[2].strip("|").split("|")]
    assert head == [
        "method", "train", "OOD set", "seeds", "ACC", "ECE %", "NLL",
        "AUROC (max p)", "FPR95 (max p)", "AUROC (entropy)", "FPR95 (entropy)",
        "AUROC (MI)", "FPR95 (MI)", "best",
    ]  # fmt: skip
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:]]
    assert len(rows) == 2 * len(OOD_SHIFTED)  # one per (method, shifted set)
    assert {r[2] for r in rows} == set(OOD_SHIFTED)
    by = {(r[0], r[2]): dict(zip(head, r)) for r in rows}
    mle, sbl = by[("mle+ts", "arc_easy")], by[("scalabl[samples=3]", "arc_easy")]
    assert (
        sbl["AUROC (MI)"] == "1.000 [1.000, 1.000]" and sbl["FPR95 (MI)"] == "0.000 [0.000, 0.000]"
    )
    assert sbl["AUROC (max p)"] == "1.000 [1.000, 1.000]" and sbl["best"] == "max p"
    assert mle["AUROC (MI)"] == "–" and mle["FPR95 (MI)"] == "–"
    summary = {(r["method"], r["eval"]): r for r in result["summary"]}
    row = summary[("scalabl[samples=3]", "arc_easy")]
    assert sbl["ACC"] == f"{row['acc']:.3f}" and sbl["NLL"] == f"{row['nll']:.3f}"
    assert sbl["ECE %"] == f"{row['ece'] * 100:.1f}"
    assert "auroc_max_prob" not in summary[("mle+ts", "openbookqa")]
    # table.md keeps its shape, with the cells' train and predict times at the end
    table_head = (tmp_path / "ood" / "table.md").read_text().splitlines()[0]
    assert table_head == (
        "| method | train | eval | seeds | ACC | ECE % | NLL | Brier | AURC | MI "
        "| AUROC (MI) | AUROC (max p) | extra params | train s | predict s |"
    )
    saved = json.loads((tmp_path / "ood" / "table.json").read_text())
    times = {r["eval"]: r.get("predict_seconds") for r in saved["rows"]}
    assert times["openbookqa"] == 2.0 and times["arc_easy"] == 3.0  # each split's own time
    assert times["arc_challenge"] is None  # a split the cell has no time for: none made up
    assert "fpr95_entropy_low" in saved["rows"][1] or "fpr95_entropy_low" in saved["rows"][2]


def test_several_seeds_show_mean_and_std(tmp_path):
    cfg = _write_fake_grid(tmp_path, ["scalabl[samples=3]"], [0, 1])
    result = build_table(cfg)
    rows = [r for r in result["rows"] if r["eval"] == "arc_easy"]
    aurocs = [r["auroc_mutual_information"] for r in rows]
    assert aurocs[0] == 1.0 and aurocs[1] < 1.0  # seed 1 has one shifted-looking question
    (row,) = [r for r in result["summary"] if r["eval"] == "arc_easy"]
    assert row["auroc_mutual_information"] == pytest.approx(np.mean(aurocs))
    assert row["auroc_mutual_information_std"] == pytest.approx(np.std(aurocs, ddof=1))
    assert "auroc_mutual_information_low_std" not in row
    text = ood_markdown_table(result["summary"])
    want = f"{np.mean(aurocs):.3f} ± {np.std(aurocs, ddof=1):.3f}"
    line = next(x for x in text.splitlines() if "| arc_easy |" in x)
    assert want in line and " [0." not in line and " [1." not in line


def test_an_in_distribution_table_writes_no_ood_table(tmp_path):
    arrays = _cell_arrays(3, 0)
    arrays = {k: v for k, v in arrays.items() if "openbookqa" in k or "selection" in k}
    rows = cell_rows(parse_method("scalabl"), _meta(0), arrays, 15)
    assert not any(k.startswith(("auroc", "fpr95")) for k in rows[0])
    assert "AUROC" not in markdown_table(summarise(rows))
    assert ood_markdown_table(summarise(rows)).count("\n") == 4  # caption, blank, header, rule


# --------------------------------------------------------------------------- the bar


def _bar_row(method: str, ood_set: str, **aurocs: float) -> dict:
    row = {"method": method, "task": "openbookqa", "eval": ood_set, "seeds": 3}
    row.update({f"auroc_{k}": v for k, v in aurocs.items()})
    return row


RECIPE, BASELINE = "scalabl[normalization=mean,init_scale=0.4]+ts", "mle+ts"


def test_the_far_ood_bar_passes_and_fails_per_set():
    summary = [
        _bar_row(RECIPE, "mmlu_college_chemistry", max_prob=0.60, mutual_information=0.70),
        _bar_row(BASELINE, "mmlu_college_chemistry", max_prob=0.65, entropy=0.9),
        _bar_row(RECIPE, "mmlu_college_physics", max_prob=0.58, entropy=0.57),
        _bar_row(BASELINE, "mmlu_college_physics", max_prob=0.61),
        _bar_row(RECIPE, "arc_easy", max_prob=0.1),  # near OOD: not part of the bar
    ]
    verdict = far_ood_verdict(summary, RECIPE, BASELINE)
    assert set(verdict) == set(FAR_OOD)
    chem, phys = verdict["mmlu_college_chemistry"], verdict["mmlu_college_physics"]
    assert chem["recipe_score"] == "mutual_information" and chem["passed"] is True
    assert chem["recipe_auroc"] == 0.70 and chem["baseline_auroc"] == 0.65  # not its entropy
    assert chem["margin"] == pytest.approx(0.05)
    assert phys["recipe_score"] == "max_prob" and phys["passed"] is False
    assert phys["margin"] == pytest.approx(-0.03)
    assert chem["recipe_seeds"] == chem["baseline_seeds"] == 3
    tie = [_bar_row(RECIPE, "x", max_prob=0.6), _bar_row(BASELINE, "x", max_prob=0.6)]
    assert far_ood_verdict(tie, RECIPE, BASELINE, sets=["x"])["x"]["passed"] is False


def test_the_bar_without_its_rows_is_one_line():
    summary = [_bar_row(BASELINE, "mmlu_college_chemistry", max_prob=0.6)]
    with pytest.raises(ScalaBLError, match=r"no rows of 'scalabl.*'mmlu_college_chemistry'"):
        far_ood_verdict(summary, RECIPE, BASELINE)
    bare = [{"method": m, "task": "t", "eval": "x", "seeds": 1} for m in (RECIPE, BASELINE)]
    with pytest.raises(ScalaBLError, match="carry no OOD AUROC"):
        far_ood_verdict(bare, RECIPE, BASELINE, sets=["x"])


# --------------------------------------------------------------------------- #
# benchmarks/ood_figures.py: the figure's numbers are the table's


def _ood_figures():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "ood_figures.py"
    spec = importlib.util.spec_from_file_location("ood_figures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ood_figure_intervals_are_the_tables() -> None:
    figs = _ood_figures()
    recipe, base = figs.RECIPE, "mle[normalization=mean]+ts"
    summary = [
        # one seed: the bootstrap interval
        {
            "method": base,
            "eval": "mmlu_college_physics",
            "seeds": 1,
            "auroc_max_prob": 0.6,
            "auroc_max_prob_low": 0.5,
            "auroc_max_prob_high": 0.7,
            "auroc_entropy": 0.61,
            "auroc_entropy_low": 0.51,
            "auroc_entropy_high": 0.72,
        },
        # several seeds: mean -+ std, clipped to [0, 1]
        {
            "method": recipe,
            "eval": "mmlu_college_physics",
            "seeds": 3,
            "auroc_mutual_information": 0.95,
            "auroc_mutual_information_std": 0.1,
        },
        # in-distribution rows and methods outside the protocol are left out
        {"method": recipe, "eval": "openbookqa", "seeds": 3, "acc": 0.4},
        {
            "method": "map",
            "eval": "mmlu_college_physics",
            "seeds": 1,
            "auroc_max_prob": 0.5,
            "auroc_max_prob_low": 0.4,
            "auroc_max_prob_high": 0.6,
        },
    ]
    got = figs.auroc_intervals(summary)
    assert list(got) == ["MMLU physics (far)"]
    assert got["MMLU physics (far)"] == {
        "MLE + TS": {"max p": (0.6, 0.5, 0.7), "entropy": (0.61, 0.51, 0.72)},
        "recipe": {"MI": (0.95, pytest.approx(0.85), 1.0)},
    }


def test_ood_mechanism_score_geometry_known_answer() -> None:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "ood_mechanism.py"
    spec = importlib.util.spec_from_file_location("ood_mechanism", path)
    mech = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mech)

    # two draws, one question with three choices of which the third is absent; centred
    # log-probs are +-1 at draw 0 and +-2 at draw 1: range 3 (mean +-1.5), spread 0.5
    def logp(z: float) -> np.ndarray:
        lp = np.array([z, -z]) - np.logaddexp(z, -z)
        return np.append(lp, -np.inf)

    slp = np.stack([logp(1.0), logp(2.0)])[:, None, :]
    got = mech.score_geometry(slp)
    assert got["score_range"] == pytest.approx(3.0)
    assert got["draw_spread"] == pytest.approx(0.5)
    assert got["spread_over_range"] == pytest.approx(0.5 / 3.0)
    assert got["questions"] == 1 and got["mutual_information"] > 0
