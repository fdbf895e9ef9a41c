"""Methods x data sets x seeds -> one table, mean +- std over seeds; resumable.

A *cell* is one (method, data set, seed): build the model, train it on a
fixed training subset, predict the selection split and every report split,
and save everything needed to recompute any metric later (the per-sample
log-probabilities, S x N x C, as ``.npz``) plus a JSON of metrics. A cell is
written atomically once it has finished, and a re-run skips it, so a grid too
large for one sitting finishes over several runs. The table is rebuilt from
the saved cells every time.

Methods are named by a spec string ``name[key=value,...][+ts]``:

- ``name`` is one of :data:`METHODS` (``mle``, ``scalabl``, ``full_rank``...);
- ``[key=value,...]`` overrides any field of :class:`~scalabl_pyro.config.ScalaBLConfig`
  or :class:`~scalabl_pyro.inference.train.TrainConfig` (``scalabl[kl_weight=10,init_scale=0.2]``),
  plus ``samples`` (BMA samples at prediction);
- ``+ts`` adds temperature scaling, fitted post hoc on the selection split
  (the method's own cell is reused: no extra training).

Splits (the protocol keeps test data out of every choice):

- *in-distribution*: train on ``train``; the selection split is
  ``validation``; the report split is ``test`` where the data set has one.
  Where it has none (BoolQ, WinoGrande) the validation split is cut into two
  disjoint halves with a fixed seed: selection and report.
- *ood* (the paper's protocol): train on OpenBookQA; report OBQA test and the
  shifted sets ARC-C, ARC-E, MMLU college chemistry and physics; OOD detection
  of each shifted set against the OBQA test set, from max probability,
  predictive entropy and mutual information: AUROC and FPR95 with percentile
  bootstrap intervals (``ood_table.md``), and the far-OOD bar of
  :func:`far_ood_verdict`.

Hyperparameters are the spec's; whatever was chosen on the selection split is
recorded with the table (``selection`` in ``benchmark.json``).

The package, one concern per module: :mod:`.spec` (the spec grammar and
:class:`BenchmarkConfig`), :mod:`.splits` (the split protocol), :mod:`.cells`
(one cell: train, predict, save, read back), :mod:`.tables` (rows, summary,
markdown/CSV/JSON), :mod:`.verdict` (the OOD protocol's bar) and :mod:`.runner`
(the grid, resumable). Every name is re-exported here.
"""

from __future__ import annotations

from scalabl_pyro.experiments.benchmark.cells import (
    CELL_DIR,
    cell_damage,
    cell_path,
    extra_parameters,
    load_cell,
    run_cell,
    split_metrics,
)

# private names that the scripts in benchmarks/ and the tests import from here
from scalabl_pyro.experiments.benchmark.cells import (
    _bma_log_probs as _bma_log_probs,
)
from scalabl_pyro.experiments.benchmark.cells import (
    _check_cell_config as _check_cell_config,
)
from scalabl_pyro.experiments.benchmark.runner import (
    SETTINGS_FILE,
    build_table,
    machine,
    rebuild_table,
    run_benchmark,
)
from scalabl_pyro.experiments.benchmark.spec import (
    FAR_OOD,
    METHODS,
    NEAR_OOD,
    OOD_SHIFTED,
    OOD_TRAIN,
    BenchmarkConfig,
    MethodSpec,
    parse_method,
)
from scalabl_pyro.experiments.benchmark.splits import (
    task_splits,
)
from scalabl_pyro.experiments.benchmark.tables import (
    OOD_METRICS,
    OOD_SCORE_NAMES,
    TABLE_METRICS,
    best_ood_score,
    cell_rows,
    markdown_table,
    ood_columns,
    ood_markdown_table,
    row_arrays,
    summarise,
    write_table,
)
from scalabl_pyro.experiments.benchmark.tables import (
    _temperature_scaled as _temperature_scaled,
)
from scalabl_pyro.experiments.benchmark.verdict import far_ood_verdict, near_ood_choice

__all__ = [
    "BenchmarkConfig",
    "best_ood_score",
    "build_table",
    "cell_damage",
    "CELL_DIR",
    "cell_path",
    "cell_rows",
    "extra_parameters",
    "FAR_OOD",
    "NEAR_OOD",
    "far_ood_verdict",
    "near_ood_choice",
    "load_cell",
    "machine",
    "markdown_table",
    "METHODS",
    "MethodSpec",
    "OOD_METRICS",
    "ood_columns",
    "ood_markdown_table",
    "OOD_SCORE_NAMES",
    "OOD_SHIFTED",
    "OOD_TRAIN",
    "parse_method",
    "rebuild_table",
    "run_benchmark",
    "row_arrays",
    "run_cell",
    "SETTINGS_FILE",
    "split_metrics",
    "summarise",
    "TABLE_METRICS",
    "task_splits",
    "write_table",
]
