"""Execute the tutorial notebooks in place, so their stored outputs match today's defaults.

    python tools/run_notebooks.py                 # every notebook, quick mode
    python tools/run_notebooks.py --full 01_quickstart 02_guide_families

Each notebook runs in a fresh temporary working directory (whatever it writes stays there)
with ``MPLBACKEND=Agg`` and, unless named with ``--full``, ``SCALABL_QUICK=1``. Its first code
cell prints the provenance (version, commit, defaults fingerprint) and the mode, which
``tests/test_notebook_fingerprint.py`` checks. The file is replaced only after a run without
errors (written to a temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def run(path: Path, *, quick: bool, timeout: int) -> float:
    """Execute one notebook and store its outputs; returns the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    env_before = dict(os.environ)
    os.environ.update({"MPLBACKEND": "Agg", "TQDM_DISABLE": "1"})
    if quick:
        os.environ["SCALABL_QUICK"] = "1"
    else:
        os.environ.pop("SCALABL_QUICK", None)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f"nb-{path.stem}-") as work:
            client = NotebookClient(
                nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": work}}
            )
            client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="notebook stems (default: all)")
    p.add_argument("--full", nargs="*", default=[], help="stems to run in full mode")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = p.parse_args(argv)
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    wanted = set(args.names) | set(args.full)
    if wanted:
        unknown = wanted - {q.stem for q in paths}
        if unknown:
            print(
                f"error: no notebook {', '.join(sorted(unknown))}; see notebooks/", file=sys.stderr
            )
            return 2
        paths = [q for q in paths if q.stem in wanted]
    for path in paths:
        quick = path.stem not in args.full
        seconds = run(path, quick=quick, timeout=args.timeout)
        print(f"{path.name}: {'quick' if quick else 'full'} mode, {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
