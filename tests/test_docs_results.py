"""The accuracy tables of README.md, docs/*.md and benchmarks/RESULTS.md are renderings of
benchmarks/results/*.csv (``python -m benchmarks.render_results``), and their links resolve.

Pure pandas and text: no torch, only files in the repository; a few seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import render_results

REPO = Path(__file__).resolve().parents[1]
MARKDOWN = render_results.default_files(REPO)


@pytest.fixture(scope="module")
def data():
    return render_results.load_results()


def test_every_marked_table_equals_its_rendering_from_the_csvs(data):
    problems = render_results.check_files(MARKDOWN, data)
    assert not problems, "\n".join(map(str, problems))


def test_the_documents_hold_their_tables():
    used = render_results.used_tables(MARKDOWN)
    readme = [name for name, files in used.items() if str(REPO / "README.md") in files]
    assert readme == ["target"], "the README holds exactly one results table, the headline"
    results_page = [name for name, files in used.items() if str(REPO / "docs" / "results.md") in files]
    assert len(results_page) >= 10
    unused = [name for name, files in used.items() if not files]
    assert not unused, f"declared tables that no document holds: {unused}"


def test_means_and_paired_differences_are_computed_from_the_seeds(data):
    # random real, CIFAR-10 IPC 10, 15-epoch teacher: 36.24, 38.90, 39.43 -> 38.19 +- 1.71 (sample std)
    assert "| random real | 36.24 | 38.90 | 39.43 | 38.19 +- 1.71 |  |" in render_results.render_table(
        "cifar10-ipc10-teacher15", data).splitlines()
    # ddm - random real under DSA, by seed: 12.76, 13.73, 13.47 -> +13.32 +- 0.50 (every table pairs
    # seed 2 with the random-real row's 27.27)
    dm_table = render_results.render_table("cifar10-ipc10-dsa-dm", data)
    assert "| `ddm` (60 iterations) | 41.40 | 41.10 | 40.74 | 41.08 +- 0.33 | +13.32 +- 0.50 |" in dm_table
    # a set run in one seed only shows that seed, and is paired in that seed only
    ipc50 = render_results.render_table("cifar10-ipc50-fkd", data)
    assert "| 60.41 (seed 0) | -4.30 (seed 0) |" in ipc50


def test_beats_both_needs_a_paired_margin_above_the_larger_std():
    seeds = [0, 1, 2]
    candidate = pd.Series([50.0, 52.0, 54.0], index=seeds)  # std 2.00
    weak = pd.Series([40.0, 40.5, 41.0], index=seeds)  # std 0.50: margin +11.50 > 2.00
    close = pd.Series([47.0, 49.5, 52.0], index=seeds)  # std 2.50: margin +2.50, not above 2.50
    assert render_results.margin(candidate, weak) == pytest.approx((11.5, 2.0))
    assert render_results.beats_both(candidate, [weak]) is True
    assert render_results.beats_both(candidate, [weak, close]) is False
    assert render_results.beats_both(candidate, [weak, close.iloc[:2]]) is None  # 2 shared seeds: not judged


def test_the_target_table_names_winners_or_the_nearest(data):
    rows = []
    for seed, (rr, f2, good, tie) in enumerate([(40.0, 45.0, 50.0, 45.0), (41.0, 46.0, 51.0, 47.0),
                                                (42.0, 47.0, 52.0, 46.0)]):
        for name, top1 in (("random-real", rr), ("random-real-f2", f2), ("wmdd", good), ("dm", tie)):
            rows.append({"dataset": "cifar10", "ipc": "10", "labels": "fkd", "student_epochs": "200",
                         "teacher": "t", "teacher_top1": "80.00", "set": name, "seed": seed, "top1": top1})
    frame = pd.DataFrame(rows)
    cell = {"dataset": "cifar10", "ipc": 10, "labels": "fkd", "student_epochs": 200, "teacher": "t"}
    wins = render_results.Target("t", (render_results.Cell("won", cell, (render_results.Row("wmdd", "`wmdd`"),
                                                                         render_results.Row("dm", "`dm`"))),))
    line = render_results.render_target(wins, frame).splitlines()[2]
    assert line == "| won | 80.00 % | 41.00 +- 1.00 | 46.00 +- 1.00 | `wmdd` +10.00 +- 0.00 / +5.00 +- 0.00 |  |"
    missed = render_results.Target("t", (render_results.Cell("missed", cell, (render_results.Row("dm", "`dm`"),)),))
    line = render_results.render_target(missed, frame).splitlines()[2]
    assert line.endswith("| none | `dm` +5.00 +- 1.00 / 0.00 +- 1.00 |")


def _first_block(path: Path) -> tuple[str, re.Match]:
    text = path.read_text(encoding="utf-8")
    match = next(render_results.MARKER.finditer(text), None)
    assert match is not None, f"{path} holds no marked table"
    return text, match


@pytest.mark.parametrize("document", ["README.md", "docs/results.md", "benchmarks/RESULTS.md"])
def test_a_number_edited_by_hand_fails_the_check(document, tmp_path, data):
    text, match = _first_block(REPO / document)
    body = match.group("body")
    number = re.search(r"\| (\d+\.\d\d) ", body.split("\n", 2)[2])  # the first number of the first data row
    assert number is not None
    offset = body.index("\n", body.index("\n") + 1) + 1
    old = number.group(1)
    new = f"{float(old) + 0.01:.2f}"
    edited = body[:offset + number.start(1)] + new + body[offset + number.end(1):]
    copy = tmp_path / Path(document).name
    block = text[match.start():match.end()]
    copy.write_text(block.replace(body, edited) + "\n", encoding="utf-8")

    problems = render_results.check_files([copy], data)
    assert len(problems) == 1, problems
    message = str(problems[0])
    assert problems[0].table == match.group("name") and str(copy) in message and new in message

    render_results.rewrite_files([copy], data)
    assert copy.read_text(encoding="utf-8") == block + "\n"
    assert render_results.check_files([copy], data) == []


def test_a_changed_measurement_fails_the_check(data):
    changed = data.copy()
    row = changed.index[(changed["set"] == "wmdd") & (changed["dataset"] == "cifar10")
                        & (changed["labels"] == "fkd") & (changed["ipc"] == "10")][0]
    changed.loc[row, "top1"] += 1.0
    problems = render_results.check_files([REPO / "README.md"], changed)
    assert [p.table for p in problems] == ["target"]


def test_unknown_and_unclosed_markers_are_reported(data):
    text = "<!-- results:no-such-table -->\n| a |\n<!-- /results:no-such-table -->\n<!-- results:headline-ipc10 -->\n"
    problems = render_results.check_text(text, Path("x.md"), data)
    assert sorted(p.table for p in problems) == ["headline-ipc10", "no-such-table"]


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    anchors = set()
    for line in _outside_code(path.read_text(encoding="utf-8")):
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _outside_code(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


@pytest.mark.parametrize("document", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file_that_exists(document):
    broken = []
    for line in _outside_code(document.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = (document.parent / path).resolve() if path else document
            if not resolved.exists():
                broken.append(target)
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{target} (no such heading)")
    assert not broken, f"{document}: {broken}"
