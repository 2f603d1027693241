"""Sampling backends, the pass@k estimator and the diversity metrics."""

import importlib.util
import math
from itertools import combinations

import numpy as np
import pytest
import torch

from geomsweep.behavior.diversity import answer_spread, distinct_m, prompt_diversity, self_jaccard
from geomsweep.behavior.passk import bootstrap_interval, default_ks, pass_at_k, per_problem_pass_at_k
from geomsweep.behavior.sample_eval import checked_ks, score
from geomsweep.behavior.sampling import (
    HFSampler,
    Samples,
    SampleSettings,
    VLLMSampler,
    make_sampler,
    vllm_sampling_kwargs,
)


def brute_force_pass_at_k(n, c, k):
    """The fraction of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_enumeration_of_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases_and_large_n():
    assert pass_at_k(256, 0, 256) == 0.0
    assert pass_at_k(256, 256, 1) == 1.0
    assert pass_at_k(256, 1, 1) == pytest.approx(1 / 256)
    # closed form with exact integers, where C(256, 128) overflows a float
    assert pass_at_k(256, 3, 128) == pytest.approx(1 - math.comb(253, 128) / math.comb(256, 128), rel=1e-12)
    with pytest.raises(ValueError, match=r"k=5, n=4.*sampler.n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c=5"):
        pass_at_k(4, 5, 1)
    assert {k: v.tolist() for k, v in per_problem_pass_at_k(4, [0, 4], [1, 4]).items()} == {1: [0, 1], 4: [0, 1]}


def test_k_lists():
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    assert default_ks(1) == [1]
    assert checked_ks([4, 1, 4], 8) == [1, 4]
    with pytest.raises(ValueError, match=r"\[16\], outside 1..sampler.n=8"):
        checked_ks([1, 16], 8)


def test_diversity_golden_values():
    samples = [[1, 2, 3], [1, 2, 4], [1, 2, 3]]
    assert distinct_m(samples, 1) == pytest.approx(4 / 9)
    assert distinct_m(samples, 2) == pytest.approx(3 / 6)  # (1,2) (2,3) (2,4)
    assert distinct_m([[5]], 2) == 0.0
    unique, entropy = answer_spread(["7", "7", "8", None])
    assert unique == 3 / 4 and entropy == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert answer_spread(["7"] * 5) == (0.2, 0.0)
    # Jaccard by hand: {1,2,3}~{1,2,4}: 2/4, {1,2,3}~{1,2,3}: 1, {1,2,4}~{1,2,3}: 2/4
    assert self_jaccard(samples) == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert self_jaccard([[], []]) == 1.0
    assert math.isnan(self_jaccard([[1]]))
    assert prompt_diversity(samples, ["1", "1", "2"]).keys() == {
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "unique_answers",
        "answer_entropy",
        "self_jaccard",
    }


def test_scoring_counts_correct_samples_and_builds_the_table():
    samples = Samples(
        ["sum 1 plus 1 is", "sum 2 plus 2 is"], [[" 2 .", " 3 ."], [" 5 .", " x"]], [[[10], [11]], [[12], [13]]]
    )
    metrics, curve, table, per_problem, intervals = score(samples, ["2", "4"], "first_number", [1, 2])
    assert curve == {1: 0.25, 2: 0.5}  # one problem with 1 of 2 right, one with 0
    assert per_problem[1].tolist() == [0.5, 0.0]
    assert intervals[1] == (0.0, 0.5)  # resampling 2 problems
    assert not [key for key in metrics if key.endswith(("_lo", "_hi"))]  # bounds are a table, not metrics
    assert metrics["pass_at_1"] == 0.25 and metrics["unique_answers"] == 1.0
    assert table["correct"] == [True, False, False, False]
    assert table["answer"] == ["2", "3", "5", ""] and table["sample"] == [0, 1, 0, 1]


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="sampler.temperature must be > 0"):
        SampleSettings(n=4, temperature=0.0)
    with pytest.raises(ValueError, match="sampler.top_p"):
        SampleSettings(n=4, top_p=1.5)
    with pytest.raises(ValueError, match="sampler.n must be >= 1"):
        SampleSettings(n=0)
    with pytest.raises(ValueError, match="unknown sampler 'beam'; valid: hf, vllm"):
        make_sampler("beam", SampleSettings(n=2))


def load_tiny(tiny_checkpoints):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_checkpoints / "step40"
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_hf_sampler_is_seeded_and_returns_n_per_prompt(tiny_checkpoints):
    model, tokenizer = load_tiny(tiny_checkpoints)
    prompts = ["sum 1 plus 2 is", "sum 3 plus 4 is", "so"]
    settings = SampleSettings(n=5, max_tokens=6, seed=3, batch_size=2)
    first = HFSampler(settings).sample(model, tokenizer, prompts)
    again = HFSampler(settings).sample(model, tokenizer, prompts)
    other = HFSampler(SampleSettings(n=5, max_tokens=6, seed=4, batch_size=2)).sample(model, tokenizer, prompts)
    assert first.prompts == prompts
    assert [len(t) for t in first.texts] == [5, 5, 5] and [len(t) for t in first.token_ids] == [5, 5, 5]
    assert all(len(ids) <= 6 for row in first.token_ids for ids in row)
    assert first.texts == again.texts and first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert not any(t in stop for row in first.token_ids for ids in row for t in ids)
    assert tokenizer.padding_side == "right"  # restored


def test_vllm_parameters_map_one_request_per_prompt_each_with_its_own_seed():
    settings = SampleSettings(n=64, temperature=0.7, top_p=0.95, max_tokens=32, seed=11)
    first = vllm_sampling_kwargs(settings, 0)
    assert {k: v for k, v in first.items() if k != "seed"} == {
        "n": 64,
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 32,
    }
    seeds = [vllm_sampling_kwargs(settings, i)["seed"] for i in range(1000)]
    assert len(set(seeds)) == 1000  # no two prompts share a random stream
    assert seeds == [vllm_sampling_kwargs(settings, i)["seed"] for i in range(1000)]  # and a job repeats itself
    other = SampleSettings(n=64, seed=12)
    assert not set(seeds) & {vllm_sampling_kwargs(other, i)["seed"] for i in range(1000)}  # nor across job seeds


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is here (tests/test_vllm.py)")
def test_vllm_without_vllm_says_how_to_install_it():
    with pytest.raises(RuntimeError, match="sampler=vllm needs vLLM, which is not installed.*make install-vllm"):
        VLLMSampler(SampleSettings(n=2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_hf_sampler_on_cuda_is_seeded(tiny_checkpoints):
    model, tokenizer = load_tiny(tiny_checkpoints)
    model = model.cuda()
    settings = SampleSettings(n=8, max_tokens=6, seed=5)
    first = HFSampler(settings).sample(model, tokenizer, ["sum 1 plus 2 is", "so"])
    assert first.token_ids == HFSampler(settings).sample(model, tokenizer, ["sum 1 plus 2 is", "so"]).token_ids


def test_bootstrap_interval_of_pass_at_k_over_problems():
    assert bootstrap_interval([0.25] * 10) == (0.25, 0.25)  # no spread across problems, no interval
    # 400 problems solved with probability 1/2: the interval of the mean is +-1.96 sqrt(p(1-p)/P) = +-0.049
    values = np.random.default_rng(1).integers(0, 2, size=400).astype(float)
    lo, hi = bootstrap_interval(values)
    assert lo < values.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(1.96 * np.sqrt(values.mean() * (1 - values.mean()) / 400), rel=0.1)
    with pytest.raises(ValueError, match="at least one problem"):
        bootstrap_interval([])
