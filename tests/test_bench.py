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


@pytest.mark.slow
def test_slm_bench_quick_runs_end_to_end_and_writes_its_results(tmp_path, capsys, monkeypatch):
    """Every measurement of `slm bench --quick` runs and lands in the results files.

    The sizes are cut so the smoke test takes seconds, not the ~10 minutes the real
    figures take on 2 cores: the tiny preset's shape instead of seed-2.5m, small matrices,
    two plays, 16 new tokens, each measurement in this process instead of a fresh one.
    """
    import functools

    import torch

    from slm.bench import generation, serving, suite
    from slm.cli.main import main
    from slm.config import ModelConfig, preset
    from slm.data import corpus
    from slm.model import GPT

    def tiny_model() -> GPT:
        torch.manual_seed(0)
        return GPT(ModelConfig(**{**preset("tiny"), "vocab_size": 4096, "context_len": 128})).eval()

    plays = list(corpus.iter_plays())[:2]
    monkeypatch.setattr(corpus, "iter_plays", lambda: iter(plays))
    monkeypatch.setattr(suite, "run_isolated", lambda fn, *args: fn(*args))
    monkeypatch.setattr(suite, "TRAIN_PRESETS", ("tiny",))
    monkeypatch.setattr(suite, "matmul_peak", functools.partial(suite.matmul_peak, size=64))
    throughput = functools.partial(suite.train_throughput, context_len=32)
    monkeypatch.setattr(suite, "train_throughput", throughput)
    monkeypatch.setattr(generation, "NEW_TOKENS", 16)
    monkeypatch.setattr(generation, "seed_model", tiny_model)
    monkeypatch.setattr(serving, "seed_model", tiny_model)
    threads = torch.get_num_threads()
    try:
        code = main(["bench", "--quick", "--no-compile", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    (json_path,) = tmp_path.glob("*.json")
    results = load_results(json_path)
    assert {"machine", "peak", "prepare", "train", "generate"} <= set(results)
    # bf16 is measured only where its matmuls are not emulated (at least 1/4 of fp32's peak)
    peaks = {d: r["gflops"]["median"] for d, r in results["peak"].items()}
    bf16 = [("bfloat16", False)] if peaks["bfloat16"] >= peaks["float32"] / 4 else []
    assert [(r["dtype"], r["compile"]) for r in results["train"]] == [("float32", False), *bf16]
    if not bf16:
        assert "bf16 matmuls are emulated" in err
    assert all(r["tokens_per_s"]["median"] > 0 for r in results["train"])
    table = json_path.with_suffix(".md").read_text(encoding="utf-8")
    assert out == table  # the table is the product: stdout
    assert results["generate"]["throughput"] and results["generate"]["rows"]
    if suite.serving_available():
        assert results["serve"]["rows"]
    rows = [*results["generate"]["rows"], *results.get("serve", {}).get("rows", [])]
    assert all(row["what"] in table for row in rows)


def test_interleaved_rounds_take_turns_and_skip_the_settling_round() -> None:
    from slm.bench.measure import interleaved_rates, rates_table, ratio_summary

    calls: list[str] = []
    steps = {name: (lambda name=name: calls.append(name), 100) for name in ("a", "b")}
    rates = interleaved_rates(steps, rounds=3, per_round=2)
    # Four rounds (one uncounted), each running a's two steps then b's two.
    assert calls == ["a", "a", "b", "b"] * 4
    assert [len(v) for v in rates.values()] == [3, 3]
    assert all(r > 0 for v in rates.values() for r in v)
    assert ratio_summary([2.0, 3.0, 4.0], [1.0, 2.0, 1.0]) == "2.00x (1.50-4.00)"
    table = rates_table({"a": [1.0, 2.0, 1.0], "b": [2.0, 3.0, 4.0]}, "a", "step")
    assert table.splitlines()[3] == "| b | 3 (100%) | 2.00x (1.50-4.00) |"
