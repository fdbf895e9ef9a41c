"""lm-evaluation-harness parity: a ScalaBL export scored by ``lm-eval`` and by this library.

A ScalaBL model (choice format, ``normalization="sum"``, mean-field guide) is
trained for a few steps on ARC-Easy train and exported with
``ScalaBL.export_adapter``. The same ARC-Easy validation questions are then
scored twice:

* by this library, through the path of ``scalabl evaluate --mode mean``
  (``ScalaBL.predict(mode="mean")``: the posterior-mean model), plus the raw
  summed answer log-likelihoods from the same scoring code;
* by ``lm-eval`` (``simple_evaluate``, model ``hf`` with
  ``pretrained=<the base the adapter names>, peft=<adapter>``), over a custom
  task read from a local JSONL copy of the questions (no network).

The custom task uses the library's choice prompt, which is also lm-eval's
``arc_easy`` prompt: ``"Question: {question}\\nAnswer:"``, target delimiter
``" "``, each answer text as a continuation. Questions and answers are written
stripped, as :class:`~scalabl_pyro.program.formats.ChoiceFormat` strips them.

Recorded (``benchmarks/results/lm_eval_parity.json``): the largest absolute
difference of a per-choice log-likelihood and of a per-question log-probability
over choices; how many (question, choice) pairs tokenise differently; and the
agreement of lm-eval's ``acc`` / ``acc_norm`` / ``acc_bytes`` decisions with
ours under ``normalization="sum"`` and ``"byte"`` (ours divides by the UTF-8
bytes of ``" " + answer``, lm-eval's ``acc_norm`` by the characters of the
answer and ``acc_bytes`` by its bytes, both without the delimiter), and with
our scores divided by lm-eval's divisors.

    OMP_NUM_THREADS=1 python benchmarks/lm_eval_parity.py --limit 100

Needs the ``harness`` extra (``pip install 'scalabl-pyro[harness]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, machine, write_results  # noqa: E402

TASK = "scalabl_arc_easy_local"
PROMPT = "Question: {{question}}\nAnswer:"
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: {prompt}
doc_to_target: label
doc_to_choice: choices
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
  - metric: acc_bytes
"""


def write_task(data, folder: Path) -> Path:
    """A local JSONL copy of ``data`` and an lm-eval task YAML over it; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = folder / "validation.jsonl"
    with open(jsonl, "w") as f:
        for ex in data:
            row = {
                "id": ex.id,
                "question": ex.question.strip(),
                "choices": [c.strip() for c in ex.choices],
                "label": int(ex.label),
            }
            f.write(json.dumps(row) + "\n")
    text = TASK_YAML.format(task=TASK, data=json.dumps(str(jsonl)), prompt=json.dumps(PROMPT))
    (folder / f"{TASK}.yaml").write_text(text)
    return folder


def ours(sbl, data, batch_size: int = 8) -> dict:
    """Our per-choice summed log-likelihoods and the evaluate --mode mean log-probabilities."""
    from scalabl_pyro.program.formats import ChoiceFormat

    fmt = ChoiceFormat(sbl.tokenizer, data.num_classes, normalization="sum")
    mean = sbl.posterior_mean()
    examples = list(data)
    sums, nbytes, tokens = [], [], []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            batch = fmt.encode(chunk).to(sbl.device)
            scores = sbl.model.scores(batch, mean).double().cpu()
            sums.append(scores.numpy())
            b = np.full(scores.shape, np.nan)
            b[batch.row_example.cpu().numpy(), batch.row_choice.cpu().numpy()] = (
                batch.answer_bytes.cpu().numpy()
            )
            nbytes.append(b)
            for r in range(batch.num_rows):
                row = batch.input_ids[r][batch.attention_mask[r].bool()].tolist()
                n_target = int(batch.target_mask[r].sum())
                tokens.append((row[:-n_target], row[-n_target:]))
    # what `scalabl evaluate --mode mean` runs
    pred = sbl.predict(data, mode="mean", progress=False)
    return {
        "ll": np.concatenate(sums),
        "answer_bytes": np.concatenate(nbytes),
        "log_probs": pred.sample_log_probs[0],
        "tokens": tokens,
        "pred": pred,
    }


def lm_eval_tokens(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4.13's split of a request into tokens (``TemplateLM._encode_pair``, causal)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


def harness(base: str, adapter: Path, task_dir: Path, batch_size: int) -> list[dict]:
    """lm-eval's per-question samples (sorted by doc id) for the local task."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model="hf",
        model_args={
            "pretrained": base,
            "peft": str(adapter),
            "dtype": "float32",
            "device": "cpu",
        },
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(task_dir)),
        batch_size=batch_size,
        log_samples=True,
    )
    return sorted(out["samples"][TASK], key=lambda s: s["doc_id"])


def compare(sbl, data, samples: list[dict], ours_out: dict) -> dict:
    """Per-question differences and decision agreement (see the module docs)."""
    examples = list(data)
    n = len(examples)
    assert [s["doc_id"] for s in samples] == list(range(n))
    ll_diff, lp_diff, pairs = 0.0, 0.0, 0
    agree = {"acc": 0, "acc_norm_vs_byte": 0, "acc_bytes_vs_byte": 0}
    agree_same_divisor = {"acc_norm": 0, "acc_bytes": 0}
    token_mismatch, row = 0, 0
    for i, (ex, s) in enumerate(zip(examples, samples, strict=True)):
        c = len(ex.choices)
        theirs = np.array([float(r[0]) for r in s["filtered_resps"]])
        mine = ours_out["ll"][i, :c]
        ll_diff = max(ll_diff, float(np.abs(theirs - mine).max()))
        lp_theirs = theirs - np.logaddexp.reduce(theirs)
        lp_diff = max(lp_diff, float(np.abs(lp_theirs - ours_out["log_probs"][i, :c]).max()))
        pairs += c
        texts = [ch.strip() for ch in ex.choices]
        chars = np.array([len(t) for t in texts], dtype=float)
        utf8 = np.array([len(t.encode("utf-8")) for t in texts], dtype=float)
        ours_byte = mine / ours_out["answer_bytes"][i, :c]
        gold = int(ex.label)
        agree["acc"] += int(float(s["acc"]) == float(np.argmax(mine) == gold))
        agree["acc_norm_vs_byte"] += int(
            float(s["acc_norm"]) == float(np.argmax(ours_byte) == gold)
        )
        agree["acc_bytes_vs_byte"] += int(
            float(s["acc_bytes"]) == float(np.argmax(ours_byte) == gold)
        )
        agree_same_divisor["acc_norm"] += int(
            float(s["acc_norm"]) == float(np.argmax(mine / chars) == gold)
        )
        agree_same_divisor["acc_bytes"] += int(
            float(s["acc_bytes"]) == float(np.argmax(mine / utf8) == gold)
        )
        context = "Question: " + ex.question.strip() + "\nAnswer:"
        for t in texts:
            their_tokens = lm_eval_tokens(sbl.tokenizer, context, " " + t)
            token_mismatch += int(tuple(their_tokens) != tuple(ours_out["tokens"][row]))
            row += 1
    acc = {
        k: float(np.mean([float(s[k]) for s in samples])) for k in ("acc", "acc_norm", "acc_bytes")
    }
    pred = ours_out["pred"]
    ours_acc = {
        "sum": float(np.mean(np.argmax(ours_out["ll"], 1) == pred.labels)),
        "byte": float(
            np.mean(
                np.argmax(np.nan_to_num(ours_out["ll"] / ours_out["answer_bytes"], nan=-np.inf), 1)
                == pred.labels
            )
        ),
        "evaluate_mode_mean_acc": float(pred.metrics()["acc"]),
    }
    return {
        "questions": n,
        "choice_pairs": pairs,
        "max_abs_diff_choice_loglik": ll_diff,
        "max_abs_diff_question_logprob": lp_diff,
        "token_mismatches": token_mismatch,
        "lm_eval": acc,
        "ours": ours_acc,
        "per_question_agreement": {k: f"{v}/{n}" for k, v in agree.items()},
        "per_question_agreement_with_lm_eval_divisors": {
            k: f"{v}/{n}" for k, v in agree_same_divisor.items()
        },
    }


def run(sbl, data, workdir: Path, batch_size: int = 8) -> dict:
    """Export ``sbl``'s adapter into ``workdir``, score ``data`` both ways, compare."""
    adapter = sbl.export_adapter(workdir / "adapter")
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    t0 = time.perf_counter()
    mine = ours(sbl, data, batch_size)
    ours_s = time.perf_counter() - t0
    task_dir = write_task(data, workdir / "task")
    t0 = time.perf_counter()
    samples = harness(base, adapter, task_dir, batch_size)
    harness_s = time.perf_counter() - t0
    out = compare(sbl, data, samples, mine)
    out["seconds"] = {"ours": round(ours_s, 1), "lm_eval": round(harness_s, 1)}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--limit", type=int, default=100, help="validation questions")
    p.add_argument("--train-limit", type=int, default=200)
    p.add_argument("--steps", type=int, default=30, help="training steps before export")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="benchmarks/results/lm_eval_parity.json")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    from scalabl_pyro import ScalaBL, ScalaBLConfig, TrainConfig, load_task

    val = load_task("arc_easy", "validation", limit=args.limit, seed=args.seed)
    train = load_task("arc_easy", "train", limit=args.train_limit, seed=args.seed)
    cfg = ScalaBLConfig(
        base_model=args.model,
        device="cpu",
        dtype="float32",
        task_format="choice",
        normalization="sum",
        num_classes=max(val.num_classes, train.num_classes),
        seed=args.seed,
    )
    t0 = time.perf_counter()
    sbl = ScalaBL.from_base(cfg)
    if args.steps:
        sbl.fit(train, TrainConfig(steps=args.steps, batch_size=4, progress=False, seed=args.seed))
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        measured = run(sbl, val, Path(tmp), args.batch_size)
    result = {
        "what": "lm-eval vs scalabl evaluate --mode mean on ARC-Easy validation, same prompt",
        "settings": {
            "model": args.model,
            "validation_questions": args.limit,
            "subset_seed": args.seed,
            "train_questions": args.train_limit,
            "train_steps": args.steps,
            "train_batch": 4,
            "guide": cfg.guide,
            "target_modules": list(cfg.target_modules),
            "rank": cfg.rank,
            "dtype": "float32",
            "prompt": PROMPT.replace("{{question}}", "{question}"),
            "target_delimiter": " ",
            "lm_eval_model_args": "pretrained=<adapter's base_model_name_or_path>,peft=<adapter>",
        },
        **measured,
        "seconds": {"load_and_train": round(train_s, 1), **measured["seconds"]},
        "lm_eval_version": _version("lm_eval"),
        "machine": machine(),
        "command": command(),
    }
    lines = [
        "# lm-eval parity",
        "",
        f"`{result['command']}`",
        "",
        f"- questions: {result['questions']} ({result['choice_pairs']} question-choice pairs)",
        f"- max |d log-likelihood| per choice: {result['max_abs_diff_choice_loglik']:.2e}",
        f"- max |d log p(choice)| per question: {result['max_abs_diff_question_logprob']:.2e}",
        f"- token mismatches: {result['token_mismatches']}",
        f"- lm-eval: {json.dumps(result['lm_eval'])}",
        f"- ours: {json.dumps(result['ours'])}",
        f"- agreement: {json.dumps(result['per_question_agreement'])}",
        "- agreement with lm-eval's divisors: "
        + json.dumps(result["per_question_agreement_with_lm_eval_divisors"]),
        "",
    ]
    if args.output:
        write_results(args.output, result, "\n".join(lines))
    print("\n".join(lines))
    return result


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
