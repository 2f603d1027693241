"""``make bench-gpu`` at tiny shapes on the CPU: the same code as on a GPU, so it cannot rot unnoticed."""

import json

import pytest

from geomsweep.devtools.__main__ import main


def test_the_gpu_bench_at_tiny_shapes_measures_every_part_and_writes_its_json(tmp_path, capsys):
    results = main(["bench-gpu", "--shapes", "tiny", "--device", "cpu", "--out", str(tmp_path / "bench.json")])
    assert json.loads((tmp_path / "bench.json").read_text()) == results
    for model in ("pythia-1b", "olmo2-7b"):
        extraction = results[f"extraction/{model}"]
        # the streamed covariance and the authors' full SVD see the same last-token states: the same RankMe
        assert extraction["rankme"]["geomsweep"] == pytest.approx(extraction["rankme"]["authors"], rel=1e-4)
        assert all(seconds > 0 for seconds in extraction["seconds"].values())
    assert results["sampling/pythia-1b"]["hf_tokens_per_s"] > 0
    step = results["dpo_lora_step/olmo2-7b"]
    assert step["batch"] == 2 and step["max_length"] == 64 and step["plan_gib"] > 0 and step["peak_gib"] > 0
    printed = capsys.readouterr().out
    assert printed.count("(1) ") == 2 and "(2) pythia-1b" in printed and "(3) olmo2-7b LoRA DPO step" in printed


def test_real_shapes_without_cuda_are_refused_with_what_runs(tmp_path):
    refused = "--shapes real needs a CUDA GPU \\(got --device cpu\\); --shapes tiny runs anywhere"
    with pytest.raises(SystemExit, match=refused):
        main(["bench-gpu", "--shapes", "real", "--device", "cpu", "--out", str(tmp_path / "bench.json")])
    assert not (tmp_path / "bench.json").exists()
