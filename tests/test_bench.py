"""slm.bench.suite: the results table, and a quality figure kept (with its date) across runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from slm.bench.suite import carried_quality, load_results, markdown_table, write_results

RESULTS = sorted((Path(__file__).parents[1] / "benchmarks" / "results").glob("*.json"))


@pytest.fixture
def results() -> dict:
    if not RESULTS:
        pytest.skip("no committed benchmark results")
    data = load_results(RESULTS[0])
    data.pop("quality", None)
    return data


def test_quality_is_carried_over_with_the_date_it_was_measured(results, tmp_path: Path) -> None:
    earlier = {**results, "time": "2026-01-02 03:04", "quality": {"budget": "10m", "bpb": 1.9}}
    write_results(earlier, tmp_path)
    carried = carried_quality({**results, "time": "2026-02-03 00:00"}, tmp_path)
    assert carried == {"budget": "10m", "bpb": 1.9, "measured": "2026-01-02 03:04"}
    table = markdown_table({**results, "quality": carried})
    assert "measured 2026-01-02 03:04 | 1.900 bits/byte" in table


def test_a_carried_figure_keeps_its_first_date(results, tmp_path: Path) -> None:
    quality = {"budget": "10m", "bpb": 1.9, "measured": "2025-12-31 23:59"}
    write_results({**results, "time": "2026-01-02 03:04", "quality": quality}, tmp_path)
    assert carried_quality(results, tmp_path)["measured"] == "2025-12-31 23:59"


def test_nothing_to_carry_without_an_earlier_figure(results, tmp_path: Path) -> None:
    assert carried_quality(results, tmp_path) is None
    write_results(results, tmp_path)
    assert carried_quality(results, tmp_path) is None
    (tmp_path / RESULTS[0].name).write_text("{not json", encoding="utf-8")
    assert carried_quality(results, tmp_path) is None


def test_table_has_one_row_per_figure(results) -> None:
    table = markdown_table(results)
    assert table.startswith("Machine: ")
    assert "| tokenization (encode) |" in table
    assert len([line for line in table.splitlines() if line.startswith("| train ")]) == len(
        results["train"]
    )
