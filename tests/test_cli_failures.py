"""The failure table of docs/reliability.md, row by row, through the real command line.

Every case runs ``python -m scalabl_pyro.cli`` as a subprocess in a workspace
that holds a good data file, fake checkpoints and files of the user's, and
asserts what the README promises: exit status 2, exactly one line on stderr,
starting ``error:``, no traceback, and every file that was there before is
byte-for-byte (sha256) the same, with nothing created. Most cases stop before
torch is imported; the few that load a (tiny, local) model say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bad_inputs import BAD_FILES, GOOD_ROWS, jsonl

from scalabl_pyro.cli import build_parser
from scalabl_pyro.cli.options import RANGES, Range

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ helpers


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the worktree's CLI (PYTHONPATH = repo root) in ``cwd``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    full_env["HF_HOME"] = str(cwd.parent / "hf_home")  # outside the snapshot, never the user's
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "scalabl_pyro.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (directories listed too)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_one_error(out: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, exactly one ``error:`` line on stderr, no traceback; returns the line."""
    lines = out.stderr.splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in out.stderr + out.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def fails_cleanly(work: Path, args: list[str], *fragments: str, **kw) -> str:
    """Run a failing command and check the error line and that ``work`` is untouched."""
    before = snapshot(work)
    line = assert_one_error(run_cli(*args, cwd=work, **kw), *fragments)
    assert snapshot(work) == before, "a failing command changed or created files"
    return line


def _fake_checkpoint(path: Path, *, guide="mean_field", task_format="choice", state=True, **cfg):
    """A directory with every checkpoint entry; only its JSON is read before a model loads."""
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(64))
    (path / "adapter" / "adapter_config.json").write_text("{}")
    for name in ("guide.safetensors", "lora.safetensors"):
        (path / name).write_bytes(os.urandom(64))
    config = {"base_model": "smollm2-135m", "guide": guide, "task_format": task_format, **cfg}
    train_config = {"steps": 3, "batch_size": 2, "seed": 0, "objective": "elbo"}
    meta = {"library": "scalabl-pyro", "config": config, "train_config": train_config}
    (path / "scalabl_config.json").write_text(json.dumps(meta))
    (path / "history.json").write_text(json.dumps({"steps": [], "validation": []}))
    if state:
        torch.save({"step": 3}, path / "trainer_state.pt")


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """A user's folder: data, checkpoints, their own files."""
    w = tmp_path / "work"
    w.mkdir()
    (w / "data.jsonl").write_text(jsonl(GOOD_ROWS))
    nine = {"question": "q", "choices": list("abcdefghi"), "label": 0}
    (w / "nine.jsonl").write_text(jsonl([nine]))
    _fake_checkpoint(w / "ckpt")
    _fake_checkpoint(w / "ckpt_extra")
    (w / "ckpt_extra" / "notes.md").write_text("my notes")
    _fake_checkpoint(w / "ckpt_nostate", state=False)
    _fake_checkpoint(w / "ckpt_delta", guide="delta")
    _fake_checkpoint(w / "ckpt_letter", task_format="letter", num_classes=2)
    (w / "mine").mkdir()
    (w / "mine" / "notes.txt").write_text("keep me")
    (w / "mine" / "photo.png").write_text("not an image")
    (w / "blocker").write_text("a file where a directory would go")
    return w


TRAIN = ["train", "--data", "data.jsonl", "--output", "run"]
EVAL = ["evaluate", "--checkpoint", "ckpt", "--data", "data.jsonl"]
RESUME_CKPT = ["train", "--data", "data.jsonl", "--output", "ckpt", "--resume", "--steps", "9"]


# ------------------------------------------------------ never overwrite, outputs

OUTPUT_CASES = {
    "output holds a checkpoint": (
        ["train", "--data", "data.jsonl", "--output", "ckpt"],
        ["--output ckpt already holds a checkpoint", "--resume", "--overwrite"],
    ),
    "output holds the user's files": (
        ["train", "--data", "data.jsonl", "--output", "mine"],
        ["--output mine is not empty and is not a scalabl-pyro checkpoint", "--resume"],
    ),
    "--overwrite on the user's files": (
        ["train", "--data", "data.jsonl", "--output", "mine", "--overwrite"],
        ["is not a scalabl-pyro checkpoint", "nothing in it is touched"],
    ),
    "--overwrite on a checkpoint with other files": (
        ["train", "--data", "data.jsonl", "--output", "ckpt_extra", "--overwrite"],
        ["--overwrite: --output ckpt_extra also holds files", "(notes.md)", "not replaced"],
    ),
    "--resume on the user's files": (
        ["train", "--data", "data.jsonl", "--output", "mine", "--resume", "--steps", "9"],
        ["--resume: --output mine is not a scalabl-pyro checkpoint"],
    ),
    "--resume on nothing": (
        ["train", "--data", "data.jsonl", "--output", "nowhere", "--resume"],
        ["--resume: --output nowhere does not exist"],
    ),
    "--resume without training state": (
        ["train", "--data", "data.jsonl", "--output", "ckpt_nostate", "--resume", "--steps", "9"],
        ["has no trainer_state.pt"],
    ),
    "--resume with no steps left": (
        ["train", "--data", "data.jsonl", "--output", "ckpt", "--resume"],
        ["already trained 3 steps", "pass --steps above 3"],
    ),
    "--resume and --overwrite": (
        ["train", "--data", "data.jsonl", "--output", "ckpt", "--resume", "--overwrite"],
        ["argument --overwrite: not allowed with argument --resume"],
    ),
    "output is a file": (
        ["train", "--data", "data.jsonl", "--output", "data.jsonl"],
        ["--output data.jsonl is a file, not a checkpoint directory"],
    ),
    "output cannot be created": (
        ["train", "--data", "data.jsonl", "--output", "blocker/run"],
        ["--output blocker/run cannot be created", "is a file, not a directory"],
    ),
    "evaluate --output cannot be created": (
        [*EVAL, "--output", "blocker/m.json"],
        ["--output blocker/m.json cannot be created"],
    ),
    "evaluate --output is the user's file": (
        [*EVAL, "--output", "mine/notes.txt"],
        ["is not a metrics JSON written by scalabl evaluate", "not replaced"],
    ),
    "evaluate --plot is the user's file": (
        [*EVAL, "--plot", "mine/photo.png"],
        ["--plot mine/photo.png exists and is not a plot image"],
    ),
    "evaluate --output is the data": (
        [*EVAL, "--output", "data.jsonl"],
        ["--output data.jsonl is the --data file"],
    ),
    "evaluate --output is a checkpoint file": (
        [*EVAL, "--output", "ckpt/history.json"],
        ["is a file of the checkpoint in ckpt"],
    ),
    "evaluate --output is a directory": ([*EVAL, "--output", "mine"], ["is a directory"]),
    "evaluate --output and --plot collide": (
        [*EVAL, "--output", "r.png", "--plot", "r.png"],
        ["name the same file"],
    ),
    "evaluate --plot without an image suffix": (
        [*EVAL, "--plot", "rel.txt"],
        ["end it in .png, .pdf or .svg"],
    ),
    "evaluate a missing checkpoint": (
        ["evaluate", "--checkpoint", "nowhere", "--data", "data.jsonl"],
        ["--checkpoint nowhere does not exist"],
    ),
    "evaluate the user's folder": (
        ["evaluate", "--checkpoint", "mine", "--data", "data.jsonl"],
        ["--checkpoint mine is not a scalabl-pyro checkpoint"],
    ),
    "demo output is a file": (
        ["demo", "--output", "data.jsonl"],
        ["--output data.jsonl is a file"],
    ),
}


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_output_failures(work: Path, case: str) -> None:
    args, fragments = OUTPUT_CASES[case]
    fails_cleanly(work, args, *fragments)


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg"])
def test_evaluate_plot_keeps_the_users_real_image(work: Path, suffix: str) -> None:
    """A real PNG/PDF/SVG that this library did not write (no metadata mark) is not replaced."""
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(work / "mine" / f"figure.{suffix}", format=suffix)  # matplotlib's own metadata
    fails_cleanly(
        work,
        [*EVAL, "--plot", f"mine/figure.{suffix}"],
        f"--plot mine/figure.{suffix} exists and is not a plot image written by scalabl evaluate",
        "choose another path or move the file",
    )


@pytest.mark.parametrize(
    ("method", "guide", "what"),
    [
        ("map", "mle", "method map"),
        ("mle", "mle", "method mle"),
        ("scalabl", "delta", "guide delta"),
    ],
)
def test_diagnose_refuses_a_point_estimate(work: Path, method: str, guide: str, what: str) -> None:
    """No posterior spread to plot: refused like evaluate --samples, nothing written."""
    _fake_checkpoint(work / f"ckpt_{method}", guide=guide, method=method)
    fails_cleanly(
        work,
        ["diagnose", "--checkpoint", f"ckpt_{method}", "--output", "diag"],
        f"the checkpoint's {what} is a point estimate of s",
        "standard deviations of 0",
    )


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_under_proc_fails_before_training(work: Path) -> None:
    fails_cleanly(work, [*TRAIN[:-1], "/proc/scalabl/run"], "cannot be created")
    fails_cleanly(work, [*EVAL, "--plot", "/proc/scalabl/rel.png"], "--plot /proc/scalabl")


# -------------------------------------------------------------------- flags


def _numeric_options() -> list[tuple[str, str, Range]]:
    """(command, flag, range) of every numeric option of every command."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():
        for action in p._actions:
            if isinstance(action.type, Range):
                out.append((name, action.option_strings[-1], action.type))
    return out


_PREFIX = {
    "train": TRAIN,
    "evaluate": EVAL,
    "demo": ["demo", "--output", "demo_out"],
    "data": ["data", "--data", "data.jsonl"],
    "benchmark": ["benchmark", "--output", "bench_out"],
    "compare": ["compare", "--output", "compare_out"],
    "diagnose": ["diagnose", "--checkpoint", "ckpt", "--output", "diag_out"],
}


def _bad_values(rng: Range) -> list[str]:
    bad = ["ten"]
    if rng.low is not None:
        bad.append(str(rng.low if rng.low_open else rng.kind(rng.low) - 1))
    if rng.high is not None:
        bad.append(str(rng.kind(rng.high) * 2 + 1))
    if rng.kind is float:
        bad.append("nan")
    return bad


def test_every_numeric_option_has_a_documented_range() -> None:
    options = _numeric_options()
    assert {flag for _, flag, _ in options} == set(RANGES)
    doc = (ROOT / "docs" / "reliability.md").read_text()
    for flag, rng in RANGES.items():
        assert f"`{flag}`" in doc and rng.describe() in doc, flag


@pytest.mark.parametrize(
    "command, flag, value",
    [(c, f, v) for c, f, r in _numeric_options() for v in _bad_values(r)],
)
def test_numeric_option_out_of_range(work: Path, command: str, flag: str, value: str) -> None:
    line = fails_cleanly(work, [*_PREFIX[command], flag, value], f"argument {flag}: ")
    assert RANGES[flag].describe() in line and "--help" in line


COMBINATION_CASES = {
    "--normalization with the letter format": (
        [*TRAIN, "--format", "letter", "--normalization", "sum"],
        ["--normalization sets how answer texts are scored", "--format choice"],
    ),
    "evaluate zero-shot with --width": (
        ["evaluate", "--model", "smollm2-135m", "--data", "data.jsonl", "--width", "4"],
        ["--width would be ignored"],
    ),
    "evaluate --mode mean with --width": (
        [*EVAL, "--mode", "mean", "--width", "4"],
        ["--mode mean predicts with the posterior mean", "--width would be ignored"],
    ),
    "evaluate a checkpoint with --normalization": (
        [*EVAL, "--normalization", "sum"],
        ["a checkpoint keeps the scoring it was trained with"],
    ),
    "--guide mle with --prior-scale": (
        [*TRAIN, "--guide", "mle", "--prior-scale", "2"],
        ["--guide mle is plain LoRA", "--prior-scale would be ignored"],
    ),
    "--guide mle with --kl-weight": (
        [*TRAIN, "--guide", "mle", "--kl-weight", "4"],
        ["--kl-weight would be ignored"],
    ),
    "--guide mle with --kl-schedule": (
        [*TRAIN, "--guide", "mle", "--kl-schedule", "cyclic"],
        ["--kl-schedule would be ignored"],
    ),
    "point mass with --init-scale": (
        [*TRAIN, "--method", "map", "--init-scale", "0.2"],
        ["--method map starts from a point", "--init-scale would be ignored"],
    ),
    "--init-scale out of range": (
        [*TRAIN, "--init-scale", "0"],
        ["--init-scale"],
    ),
    "point mass with --particles": (
        [*TRAIN, "--guide", "delta", "--particles", "4"],
        ["--guide delta is a point mass"],
    ),
    "reference objective, other guide": (
        [*TRAIN, "--objective", "reference", "--guide", "full_rank"],
        ["official mean-field recipe"],
    ),
    "reference objective with --particles": (
        [*TRAIN, "--objective", "reference", "--particles", "2"],
        ["one posterior sample per step"],
    ),
    "reference objective, other KL schedule": (
        [*TRAIN, "--objective", "reference", "--kl-schedule", "constant"],
        ["cyclic KL weight only"],
    ),
    "linear KL schedule without warm-up": (
        [*TRAIN, "--kl-schedule", "linear"],
        ["is the constant schedule"],
    ),
    "KL warm-up without the linear schedule": (
        [*TRAIN, "--kl-warmup-steps", "10"],
        ["only applies to --kl-schedule linear"],
    ),
    "--checkpoint-every not below --steps": (
        [*TRAIN, "--steps", "10", "--checkpoint-every", "10"],
        ["--checkpoint-every 10 is not below --steps 10"],
    ),
    "--seed overflowing the step seeds": (
        [*TRAIN, "--seed", "4000", "--steps", "300000000"],
        ["overflows the per-step seeds"],
    ),
    "--targets with an empty name": ([*TRAIN, "--targets", "q_proj,"], ["empty module name"]),
    "--targets twice": ([*TRAIN, "--targets", "q_proj,q_proj"], ["names q_proj twice"]),
    "--targets lm_head with choice scoring": (
        [*TRAIN, "--targets", "q_proj,lm_head"],
        ["add --format letter"],
    ),
    "--format letter with 9 choices": (
        ["train", "--data", "nine.jsonl", "--output", "run", "--format", "letter"],
        ["9 choices but answer letters A-H", "--format choice"],
    ),
    "--resume with model options": (
        ["train", "--data", "data.jsonl", "--output", "ckpt", "--resume", "--rank", "4"],
        ["--resume continues the model saved in --output, so --rank would be ignored"],
    ),
    "--resume with a learning rate": (
        [*RESUME_CKPT, "--lr", "0.01"],
        [
            "--resume: --lr 0.01 differs from the checkpoint in --output ckpt (trained with "
            "--lr 0.001)",
            "drop --lr (--resume takes the saved values)",
        ],
    ),
    "--resume with another batch size": (
        [*RESUME_CKPT, "--batch-size", "4"],
        ["--resume: --batch-size 4 differs from the checkpoint in --output ckpt", "--batch-size 2"],
    ),
    "zero-shot with --samples": (
        ["evaluate", "--model", "smollm2-135m", "--data", "data.jsonl", "--samples", "5"],
        ["zero-shot", "--samples would be ignored"],
    ),
    "checkpoint with --format": ([*EVAL, "--format", "letter"], ["fixed by the checkpoint"]),
    "--mode mean with --samples": (
        [*EVAL, "--mode", "mean", "--samples", "4"],
        ["--samples would be ignored"],
    ),
    "point-mass checkpoint with --samples": (
        ["evaluate", "--checkpoint", "ckpt_delta", "--data", "data.jsonl", "--samples", "4"],
        ["guide delta is a point mass"],
    ),
    "point-mass checkpoint with --width": (
        ["evaluate", "--checkpoint", "ckpt_delta", "--data", "data.jsonl", "--width", "4"],
        ["--width scales a Gaussian posterior over s", "guide delta"],
    ),
    "letter checkpoint, more choices than answers": (
        ["evaluate", "--checkpoint", "ckpt_letter", "--data", "nine.jsonl"],
        ["trained for 2 answers"],
    ),
    "local file with --source hub": (
        ["data", "--data", "data.jsonl", "--source", "hub"],
        ["is a local file, but source 'hub' only reads built-in data sets"],
    ),
    "unknown data set": (["data", "--data", "arc_eazy"], ["did you mean 'arc_easy'"]),
    "unknown split": (["data", "--data", "boolq", "--split", "test"], ["has no split 'test'"]),
    "device spelled wrong": ([*TRAIN, "--device", "gpu0"], ["argument --device"]),
    "dtype spelled wrong": ([*TRAIN, "--dtype", "int8"], ["argument --dtype"]),
    "unknown guide": ([*TRAIN, "--guide", "laplace"], ["argument --guide: invalid choice"]),
    "missing --output": (["train", "--data", "data.jsonl"], ["required: --output"]),
}


@pytest.mark.parametrize("case", sorted(COMBINATION_CASES))
def test_flag_combinations(work: Path, case: str) -> None:
    args, fragments = COMBINATION_CASES[case]
    fails_cleanly(work, args, *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_fails_before_loading(work: Path) -> None:
    fails_cleanly(work, [*EVAL, "--device", "cuda"], "--device cuda: CUDA is not available")


# -------------------------------------------------------------------- data


@pytest.mark.parametrize("case", BAD_FILES, ids=lambda c: c.name)
def test_bad_data_file(work: Path, case) -> None:
    case.write(work / case.name)
    line = fails_cleanly(work, ["data", "--data", case.name], case.fragment, case.name)
    if case.row is not None:
        assert f"row {case.row} " in line


def test_bad_data_stops_train_before_the_model(work: Path) -> None:
    bad = BAD_FILES[0]
    bad.write(work / bad.name)
    fails_cleanly(work, ["train", "--data", bad.name, "--output", "run"], bad.fragment)


# --------------------------------------------------------------------- hub


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_hub_model_fails_fast(work: Path) -> None:
    """Before: five retries per file, about a minute. Now: one probe (imports torch)."""
    start = time.monotonic()
    line = fails_cleanly(
        work,
        ["evaluate", "--model", "some-org/some-model", "--data", "data.jsonl"],
        "could not load model 'some-org/some-model'",
        "cannot be reached",
        "not in the local cache",
        env={"HF_ENDPOINT": _closed_port_url()},
    )
    assert time.monotonic() - start < 30, line


def test_offline_hub_model_fails_fast(work: Path) -> None:
    start = time.monotonic()
    fails_cleanly(
        work,
        ["evaluate", "--model", "some-org/some-model", "--data", "data.jsonl"],
        "could not load model 'some-org/some-model'",
        env={"HF_HUB_OFFLINE": "1"},
    )
    # a bound against a hang on network retries (minutes), not a speed test: a busy
    # 2-core machine needs ~30 s for the interpreter and its imports alone
    assert time.monotonic() - start < 120


def test_unreachable_hub_data_fails_fast(work: Path) -> None:
    start = time.monotonic()
    fails_cleanly(
        work,
        ["data", "--data", "arc_easy", "--source", "hub"],
        "could not load allenai/ai2_arc (ARC-Easy)",
        "cannot be reached",
        "--source embedded",
        env={"HF_ENDPOINT": _closed_port_url()},
    )
    assert time.monotonic() - start < 120  # against a hang on retries, as above


# ---------------------------------------------------- one line after a model load


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scalabl_pyro.testing import tiny_model_and_tokenizer

    d = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_failure_after_the_model_loaded_is_still_one_line(work: Path, tiny_model_dir) -> None:
    """Past the model load, library progress bars and warnings stay off stderr."""
    args = [*TRAIN, "--model", str(tiny_model_dir), "--targets", "nope_proj", "--steps", "2"]
    fails_cleanly(work, args, "target module 'nope_proj' not found")
    out = run_cli("-v", *args, cwd=work)  # -v shows the logs, and still one error line
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1
    assert "INFO scalabl_pyro.io.loading: loaded" in out.stderr


# ------------------------------------------- damaged checkpoints (real, tiny model)


@pytest.fixture(scope="module")
def real_checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Two real checkpoints trained in-process: on the tiny model, and on a wider one."""
    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.data import load_local
    from scalabl_pyro.inference.train import TrainConfig
    from scalabl_pyro.testing import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("ckpts")
    (root / "data.jsonl").write_text(jsonl(GOOD_ROWS))
    data = load_local(root / "data.jsonl")
    tok = tiny_tokenizer()
    wide = tiny_model(vocab_size=len(tok), hidden=96)
    wide.config.pad_token_id = tok.pad_token_id
    wide.save_pretrained(root / "tiny96")
    tok.save_pretrained(root / "tiny96")
    for name, base in (("good", tiny_model_dir), ("wide", root / "tiny96")):
        sbl = ScalaBL.from_base(ScalaBLConfig(base_model=str(base), rank=4))
        sbl.fit(data, TrainConfig(steps=2, batch_size=2, progress=False), output_dir=root / name)
    return root


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {  # what is done to a copy of a good checkpoint, and what the one line says
    "truncated guide.safetensors": (
        lambda c: _truncate(c / "guide.safetensors"),
        "guide.safetensors is not a readable safetensors file",
    ),
    "truncated lora.safetensors": (
        lambda c: _truncate(c / "lora.safetensors"),
        "lora.safetensors is not a readable safetensors file",
    ),
    "truncated adapter safetensors": (
        lambda c: _truncate(c / "adapter" / "adapter_model.safetensors"),
        "adapter/adapter_model.safetensors is not a readable safetensors file",
    ),
    "missing adapter_config.json": (
        lambda c: (c / "adapter" / "adapter_config.json").unlink(),
        "adapter/adapter_config.json is missing; the checkpoint is incomplete",
    ),
    "truncated history.json": (
        lambda c: _truncate(c / "history.json"),
        "history.json is not valid JSON",
    ),
    "truncated trainer_state.pt (resume only)": (
        lambda c: _truncate(c / "trainer_state.pt"),
        "trainer_state.pt could not be read",
    ),
}


@pytest.mark.parametrize("command", ["evaluate", "resume"])
@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint(work: Path, real_checkpoints: Path, case: str, command: str) -> None:
    damage, fragment = DAMAGE[case]
    shutil.copytree(real_checkpoints / "good", work / "bad")
    damage(work / "bad")
    if command == "evaluate":
        if "resume only" in case:
            pytest.skip("evaluate does not read the optimizer state")
        args = ["evaluate", "--checkpoint", "bad", "--data", "data.jsonl"]
    else:
        args = ["train", "--data", "data.jsonl", "--output", "bad", "--resume", "--steps", "4"]
    line = fails_cleanly(work, args, fragment, "restore it or train again")
    assert "bad/" in line


@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_checkpoint_from_another_base_model(work: Path, real_checkpoints: Path, command: str):
    """Its model directory now holds a narrower model: refused from the headers, no traceback."""
    shutil.copytree(real_checkpoints / "wide", work / "other")
    meta_file = work / "other" / "scalabl_config.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["base_model"] = json.loads(
        (real_checkpoints / "good" / "scalabl_config.json").read_text()
    )["config"]["base_model"]
    meta_file.write_text(json.dumps(meta))
    if command == "evaluate":
        args = ["evaluate", "--checkpoint", "other", "--data", "data.jsonl"]
    else:
        args = ["train", "--data", "data.jsonl", "--output", "other", "--resume", "--steps", "4"]
    fails_cleanly(work, args, "is [4, 96] in the checkpoint's config but [4, 64] on this base")


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "data.jsonl", "--output", "ckpt"],
        ["train", "--data", "data.jsonl", "--output", "mine", "--overwrite"],
        ["train", "--data", "data.jsonl", "--output", "/proc/scalabl/run"],
        ["train", "--data", "data.jsonl", "--output", "run", "--batch-size", "0"],
        ["train", "--data", "data.jsonl", "--output", "nowhere", "--resume"],
        ["train", "--data", "data.jsonl", "--output", "mine", "--resume"],
    ],
)
def test_output_and_flag_refusals_do_not_import_torch(work: Path, args: list[str]) -> None:
    """Refusals that need no model stay cheap: torch is never imported (4 s here before)."""
    code = (
        "import sys\nfrom scalabl_pyro.cli import main\nrc = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=work, capture_output=True, text=True, env=env
    )
    assert_one_error(out)
