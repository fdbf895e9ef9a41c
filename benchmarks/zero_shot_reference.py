"""The untrained base model on a benchmark folder's own selection and report questions.

A posterior over the adapter can at most take predictions back towards the base
model's (``s`` near 0 switches the LoRA update off), so how calibrated the base model
itself is bounds what ScalaBL can do where fine-tuning teaches little. This scores the
zero-shot model (every choice normalisation, one pass, nothing trained) on exactly the
questions the cells of ``scalabl benchmark --output ROOT`` were scored on, with the
temperature that temperature scaling would fit on the selection split:

    python benchmarks/zero_shot_reference.py --root benchmarks/results/calibration/openbookqa \
        --task openbookqa --out benchmarks/results/calibration/zero_shot_openbookqa.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from scalabl_pyro import ScalaBL
from scalabl_pyro.experiments.benchmark import (
    SETTINGS_FILE,
    BenchmarkConfig,
    machine,
    split_metrics,
    task_splits,
)
from scalabl_pyro.inference.temperature import apply_temperature, fit_temperature
from scalabl_pyro.program.formats import NORMALIZATIONS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, type=Path, help="a scalabl benchmark --output folder")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    settings = json.loads((a.root / SETTINGS_FILE).read_text())["settings"]
    known = BenchmarkConfig.__dataclass_fields__
    cfg = BenchmarkConfig(methods=["mle"], **{k: v for k, v in settings.items() if k in known})
    _, select, report = task_splits(a.task, cfg)
    out: dict = {"task": a.task, "root": str(a.root), "machine": machine(), "results": {}}
    for norm in NORMALIZATIONS:
        sbl = ScalaBL.from_base(base_model=cfg.model, dtype=cfg.dtype, normalization=norm)
        preds = {
            "selection": sbl.predict(select, mode="mean", progress=False),
            "report": sbl.predict(report[a.task], mode="mean", progress=False),
        }
        slp = {k: v.sample_log_probs for k, v in preds.items()}
        temp = fit_temperature(slp["selection"][0], preds["selection"].labels)
        row = {k: split_metrics(v, preds[k].labels, cfg.n_bins) for k, v in slp.items()}
        with np.errstate(divide="ignore"):  # padded classes have probability 0
            scaled = np.log(apply_temperature(slp["report"][0], temp))[None]
        row["report+ts"] = split_metrics(scaled, preds["report"].labels, cfg.n_bins)
        row["temperature"] = float(temp)
        for key, pred in (("selection", preds["selection"]), ("report", preds["report"])):
            row[key]["n"] = len(pred.labels)
        out["results"][norm] = row
        r = row["report"]
        shown = f"ACC {r['acc']:.3f} ECE {100 * r['ece']:.1f} % NLL {r['nll']:.3f}"
        print(f"{norm}: test {shown}, temperature {temp:.2f}")
    tmp = a.out.with_name(f".{a.out.name}.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
