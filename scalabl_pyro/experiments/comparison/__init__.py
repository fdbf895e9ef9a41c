"""Guide-family comparison: several posteriors fitted on the same data, side by side.

:func:`compare_guides` fits one ScalaBL model per guide family and seed (same
base model, LoRA settings, training questions, data order, seed and step
budget; only the guide differs) in the regime Bayesian LoRA is for (by
default 64 training questions for 10 epochs, as the calibration study), and
reports for each:

* held-out ACC, ECE (15 bins), NLL and Brier of the BMA over ``num_samples``
  draws on the report questions (the benchmark's split protocol, so the
  questions are those of ``docs/calibration.md``);
* the held-out elpd (the BMA's log predictive density) with its standard
  error, and its paired difference to the first family with the SE of the
  paired per-question differences;
* k-hat of q against the posterior of **all** training questions, and
  PSIS-LOO of the training questions with the p/q correction, both from one
  (``diag_samples`` x N) matrix (:func:`scalabl_pyro.diagnostics.khat.diagnose`),
  with the counts of questions per Pareto-k band;
* the largest posterior correlation, and how far training moved the
  correlations from the guide's initialisation;
* free variational parameters and training time.

``official`` is the paper's recipe as a family: the log-mean-field guide
trained with the reference objective and the official prior.

Resumable: each finished (family, seed) leaves ``families/<name>/seed<k>/``
with ``result.json`` (the row, the settings it was made with and the
history) and ``arrays.npz``; a re-run with the same output directory loads
those and fits only what is missing. A finished cell whose settings differ
from the requested ones is refused, never reused. Outputs:
``guide_comparison.{md,csv,json}`` and PNG figures, all written atomically.

The package, one concern per module: :mod:`.config` (settings, recipes, file
names), :mod:`.fitting` (one family at one seed), :mod:`.cells` (a finished
cell on disk), :mod:`.results` (rows, summary, paired differences),
:mod:`.tables` (markdown and CSV) and :mod:`.run` (:func:`compare_guides`).
The public names are re-exported here.
"""

from __future__ import annotations

from scalabl_pyro.experiments.comparison.cells import (
    cell_dir,
    family_correlation,
    load_family_result,
)
from scalabl_pyro.experiments.comparison.config import (
    ARRAYS_FILE,
    CHECKPOINT_DIR,
    DEFAULT_FAMILIES,
    RECIPES,
    RESULT_FILE,
    TABLE_STEM,
    CompareConfig,
)
from scalabl_pyro.experiments.comparison.fitting import PeakMemory
from scalabl_pyro.experiments.comparison.results import (
    ComparisonResult,
    FamilyResult,
    paired_rows,
    summary_rows,
)
from scalabl_pyro.experiments.comparison.run import compare_guides
from scalabl_pyro.experiments.comparison.tables import csv_table, markdown_table
from scalabl_pyro.program.families import GUIDE_FAMILIES

__all__ = [
    "ARRAYS_FILE",
    "cell_dir",
    "CHECKPOINT_DIR",
    "compare_guides",
    "CompareConfig",
    "ComparisonResult",
    "csv_table",
    "DEFAULT_FAMILIES",
    "family_correlation",
    "FamilyResult",
    "GUIDE_FAMILIES",
    "load_family_result",
    "markdown_table",
    "paired_rows",
    "PeakMemory",
    "RECIPES",
    "RESULT_FILE",
    "summary_rows",
    "TABLE_STEM",
]
