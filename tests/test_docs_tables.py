"""Results tables in README.md and docs/*.md are rendered from their result files.

Fast (no model, no mkdocs): reads the pages and the files under benchmarks/results/.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rt():
    spec = importlib.util.spec_from_file_location(
        "render_tables", ROOT / "tools" / "render_tables.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def _pages(rt) -> list[Path]:
    return rt.pages()


def test_every_marked_region_equals_a_fresh_rendering(rt):
    record = rt.provenance()
    stale = []
    for page in _pages(rt):
        text = page.read_text(encoding="utf-8")
        if rt.rewrite(text, record) != text:
            stale.append(str(page.relative_to(ROOT)))
    assert not stale, (
        f"tables differ from their result files in {stale}: run python tools/render_tables.py"
    )


def test_every_referenced_result_file_has_its_commit_recorded(rt):
    record = rt.provenance()
    files = rt.referenced_files()
    assert "benchmarks/results/calibration/arc_easy/table.md" in files
    for path in files:
        assert (ROOT / path).exists(), path
        assert "commit not recorded" not in rt.commit_of(path, record), (
            f"{path} changed since its commit was recorded: run python tools/render_tables.py"
        )


def test_no_hand_typed_results_table_outside_a_marked_region(rt):
    stray = {
        str(p.relative_to(ROOT)): rt.stray_tables(p.read_text(encoding="utf-8")) for p in _pages(rt)
    }
    stray = {page: headers for page, headers in stray.items() if headers}
    assert not stray, (
        "results tables typed by hand (render them from their result file between "
        f"<!-- table: ... --> and <!-- /table -->, or delete them): {stray}"
    )


def test_readme_headline_table_is_rendered_with_its_provenance(rt):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    [(start, end, path, options)] = [r for r in rt.regions(text) if "arc_easy/table.md" in r[2]]
    region = text[start:end]
    assert "| **ScalaBL, defaults" in region
    assert "published in commit `" in region or "made at commit `" in region
    assert "settings: model smollm2-135m" in region and "machine: 2 CPUs" in region


# ------------------------------------------------------------ the renderer itself


@pytest.fixture
def results(tmp_path, rt, monkeypatch):
    """A fake checkout with one Markdown result, its JSON beside it, and provenance."""
    folder = tmp_path / "benchmarks" / "results"
    folder.mkdir(parents=True)
    (folder / "t.md").write_text(
        "Intro.\n\n| method | k | ACC | ECE % |\n|---|---|---|---|\n"
        "| a | 1 | 0.5 ± 0.1 | 10.0 |\n| a | 2 | 0.6 | 9.0 |\n| b | 1 | 0.7 | 8.0 |\n",
        encoding="utf-8",
    )
    (folder / "t.json").write_text(
        json.dumps(
            {
                "settings": {"model": "m", "steps": 3, "out": "x.json"},
                "machine": {"cpus": 2, "torch": "2.13"},
                "rows": [{"name": "a", "m": {"ece": 0.1234}}, {"name": "b", "m": {"ece": None}}],
            }
        ),
        encoding="utf-8",
    )
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    digest = rt._sha256("benchmarks/results/t.md")
    return {"benchmarks/results/t.md": {"sha256": digest, "commit": "abc1234", "how": "made"}}


def test_rows_are_selected_relabelled_and_bolded(rt, results):
    text = (
        "before\n<!-- table: benchmarks/results/t.md\n"
        "columns: [method, {ECE %: ECE}]\nwhere: {k: 1}\nrows:\n  b: B\n  a: A\nbold:\n  - b\n-->\n"
        "old\n<!-- /table -->\nafter\n"
    )
    out = rt.rewrite(text, results)
    assert out == (
        "before\n<!-- table: benchmarks/results/t.md\n"
        "columns: [method, {ECE %: ECE}]\nwhere: {k: 1}\nrows:\n  b: B\n  a: A\nbold:\n  - b\n-->\n"
        "| method | ECE |\n|---|---|\n| **B** | **8.0** |\n| A | 10.0 |\n\n"
        "<small>From `benchmarks/results/t.md`; settings: model m, steps 3; machine: 2 CPUs, "
        "torch 2.13; made at commit `abc1234`.</small>\n<!-- /table -->\nafter\n"
    )
    assert rt.rewrite(out, results) == out  # idempotent


def test_a_key_matching_several_rows_brings_all_of_them(rt, results):
    table = rt.select(rt.load_table("benchmarks/results/t.md", {}), {"rows": ["a"]})
    assert [r[1] for r in table.rows] == ["1", "2"]


def test_json_rows_take_a_field_scale_and_format(rt, results):
    options = {"columns": [{"method": "name"}, {"ECE %": "m.ece*100:.1f"}], "key": "name"}
    table = rt.load_table("benchmarks/results/t.json", options)
    assert table.header == ["method", "ECE %"]
    assert table.rows == [["a", "12.3"], ["b", "–"]]


def test_an_unknown_row_or_column_fails_loudly(rt, results):
    with pytest.raises(KeyError, match="'z' is not in the result file"):
        rt.render("benchmarks/results/t.md", {"rows": ["z"]}, results)
    with pytest.raises(KeyError, match="NLL"):
        rt.render("benchmarks/results/t.md", {"columns": ["NLL"]}, results)


def test_a_changed_result_file_asks_to_be_stamped(rt, results):
    (rt.ROOT / "benchmarks" / "results" / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    assert "commit not recorded" in rt.commit_of("benchmarks/results/t.md", results)


def test_stray_results_tables_are_found_and_exemptions_honoured(rt):
    options = "| option | meaning |\n|---|---|\n| `--x` | a flag |\n"
    hand = "| method | ACC |\n|---|---|\n| a | 0.5 |\n"
    pct = "- item\n\n  | run | share |\n  |---|---|\n  | a | 12 % |\n"
    assert rt.stray_tables(options) == []
    assert rt.stray_tables(hand) == ["| method | ACC |"]
    assert rt.stray_tables(pct) == ["| run | share |"]  # indented under a list item
    assert rt.stray_tables("```\n" + hand + "```\n") == []  # a code block is not a table
    assert rt.stray_tables("<!-- not-results: a summary -->\n" + hand) == []
    assert rt.stray_tables("<!-- results-history: old -->\n\n" + hand) == []


def test_snippet_includes_get_a_commit_caption(rt):
    md = 'Text.\n\n--8<-- "benchmarks/results/guide_comparison/khat_decomposition.md"\n'
    out = rt.snippet_captions(md)
    assert out.startswith(md.rstrip("\n"))
    assert "From `benchmarks/results/guide_comparison/khat_decomposition.md`, " in out
    assert "commit `" in out


def test_a_region_in_a_list_item_is_rendered_indented(rt, results):
    text = (
        "- item:\n\n  <!-- table: benchmarks/results/t.md\n  rows: [b]\n  -->\n"
        "  <!-- /table -->\n- next\n"
    )
    out = rt.rewrite(text, results)
    assert "\n  | method | k | ACC | ECE % |\n  |---|---|---|---|\n  | b | 1 | 0.7 | 8.0 |\n" in out
    assert "\n\n  <small>From `benchmarks/results/t.md`" in out
    assert out.endswith("</small>\n  <!-- /table -->\n- next\n")
    assert rt.rewrite(out, results) == out


def test_a_one_record_json_becomes_a_two_column_table(rt, results):
    (rt.ROOT / "benchmarks" / "results" / "r.json").write_text(
        json.dumps({"diff": 0.000123, "agree": {"acc": "9/10"}, "n": 3}), encoding="utf-8"
    )
    options = {"fields": [{"max diff": "{diff:.1e} nats"}, {"agreement": "{agree.acc} of {n}"}]}
    table = rt.load_table("benchmarks/results/r.json", options)
    assert table.header == ["measured", "value"]
    assert table.rows == [["max diff", "1.2e-04 nats"], ["agreement", "9/10 of 3"]]


def test_a_region_whose_options_are_not_yaml_fails_in_one_line(rt):
    body = "benchmarks/results/x.md\ncolumns: [a, gap [95 % CI]]"
    with pytest.raises(ValueError, match="not YAML.*quote a name") as e:
        rt.parse_directive(body)
    assert "\n" not in str(e.value)
    assert rt.parse_directive('x.md\ncolumns: [a, "gap [95 % CI]"]')[1] == {
        "columns": ["a", "gap [95 % CI]"]
    }
