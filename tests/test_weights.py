"""Weight spectra (core/weights.py): the power-law fit against what it estimates and against the powerlaw library,
the per-matrix measures against their formulas, and the matrices a model's blocks hold (peft LoRA counted once)."""

import math

import pytest
import torch

from geomsweep.core.weights import blocks, matrices, power_law_fit, weight_metrics, weight_spectra
from geomsweep.sources.checkpoints import Checkpoint


def pareto(alpha: float, xmin: float, n: int, seed: int) -> torch.Tensor:
    """Draws of p(x) ~ x^-alpha above xmin (inverse CDF)."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return xmin * (1 - u) ** (-1 / (alpha - 1))


def esd(rows: int, cols: int, seed: int, heavy: bool = False) -> torch.Tensor:
    """Squared singular values of a random matrix: Gaussian entries, or symmetric Pareto entries of tail index 2.5
    (heavy-tailed, as trained layers' are)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    if heavy:
        w = w.sign() * torch.rand(rows, cols, generator=g, dtype=torch.float64).clamp_min(1e-12) ** (-1 / 2.5)
    return torch.linalg.svdvals(w / cols**0.5) ** 2


@pytest.mark.parametrize("alpha", [2.0, 2.5, 4.0])
def test_the_fit_recovers_a_planted_power_law(alpha):
    below = torch.rand(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # a body under xmin
    fit = power_law_fit(torch.cat([below, pareto(alpha, 1.0, 4000, seed=int(alpha * 10))]))
    assert fit.alpha == pytest.approx(alpha, rel=0.06)
    assert 0.8 <= fit.xmin <= 1.6 and fit.ks_distance < 0.05


def test_a_heavy_tailed_matrix_has_a_smaller_alpha_than_a_gaussian_one():
    """Heavy-tailed self-regularisation's signature: trained (heavy-tailed) layers fit alpha ~ 2-4, random
    Gaussian ones (Marchenko-Pastur, no power-law tail) a much larger alpha."""
    heavy = power_law_fit(esd(300, 600, seed=0, heavy=True)).alpha
    gaussian = power_law_fit(esd(300, 600, seed=0)).alpha
    assert heavy < 4.5 < 2 * heavy < gaussian


@pytest.mark.parametrize("shape,heavy", [((32, 32), False), ((64, 200), False), ((300, 900), True), ((200, 200), True)])
def test_the_fit_equals_the_powerlaw_librarys(shape, heavy):
    """powerlaw.Fit with its alpha range opened (its default caps alpha at 3; WeightWatcher's own fit does not):
    the same x_min, alpha to 1e-12, the KS distance to 1e-6."""
    powerlaw = pytest.importorskip("powerlaw")
    eigs = esd(*shape, seed=sum(shape), heavy=heavy)
    theirs = powerlaw.Fit(eigs.numpy(), verbose=False, parameter_ranges={"alpha": [1, 1000]})
    ours = power_law_fit(eigs)
    assert ours.xmin == theirs.xmin
    assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-12)
    assert ours.ks_distance == pytest.approx(theirs.D, abs=1e-6)
    assert ours.n_tail == int((eigs >= theirs.xmin).sum())


def test_too_few_distinct_values_fit_nothing():
    assert math.isnan(power_law_fit(torch.tensor([1.0, 1.0, 2.0, 0.0])).alpha)


def test_each_block_matrix_is_measured_with_its_formulas(tiny_checkpoints):
    model, _ = Checkpoint("final", 40, None, str(tiny_checkpoints / "step40")).load()
    spectra = weight_spectra(model)
    stack = blocks(model)
    per_block = [matrices(block) for block in stack]
    assert len(spectra) == sum(len(m) for m in per_block) and len(per_block[0]) >= 4  # attention and MLP maps
    assert sorted({s.layer for s in spectra}) == list(range(1, len(stack) + 1))  # block i's output: hidden_states i+1
    for s in spectra:
        w = per_block[s.layer - 1][s.matrix].double()
        sigma = torch.linalg.matrix_norm(w, ord=2)
        m = s.metrics()
        assert m["stable_rank"] == pytest.approx(float((w * w).sum() / sigma**2), rel=1e-10)
        assert m["log_spectral_norm"] == pytest.approx(2 * math.log10(sigma), rel=1e-10)
        assert m["alpha_weighted"] == pytest.approx(m["alpha"] * m["log_spectral_norm"], rel=1e-12)
    summary = weight_metrics(spectra)
    assert summary["weights/alpha"] == pytest.approx(sum(s.fit.alpha for s in spectra) / len(spectra))


def test_a_lora_layer_counts_once_as_its_effective_weight(tiny_checkpoints):
    from peft import LoraConfig, get_peft_model

    model, _ = Checkpoint("final", 40, None, str(tiny_checkpoints / "step40")).load()
    plain = {(s.layer, s.matrix): s.eigs for s in weight_spectra(model)}
    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=["query_key_value"], init_lora_weights=False))
    spectra = weight_spectra(adapted)
    names = {s.matrix for s in spectra}
    assert not any("lora_" in name or "base_layer" in name for name in names)
    assert len(spectra) == len(plain)
    merged = {(s.layer, s.matrix): s.eigs for s in weight_spectra(adapted.merge_and_unload())}
    for s in spectra:
        assert torch.allclose(s.eigs, merged[(s.layer, s.matrix)], rtol=1e-5), s.matrix
    changed = [key for key in plain if "query_key_value" in key[1]]
    assert changed and all(not torch.allclose(plain[key], merged[key]) for key in changed)


def test_a_model_without_a_block_list_is_refused_by_name():
    from transformers import PretrainedConfig

    class Flat(torch.nn.Module):
        config = PretrainedConfig(num_hidden_layers=3)

    with pytest.raises(ValueError, match=r"no list of 3 blocks .* in Flat; valid: a transformers decoder"):
        weight_spectra(Flat())


@pytest.mark.parametrize("family", ["gpt2", "llama", "olmo2"])
def test_every_blocks_linear_maps_are_found_in_other_families(family):
    """GPT-2's Conv1D maps (weights stored in x out), Llama's and OLMo-2's seven projections per block."""
    import transformers

    shape = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "vocab_size": 64}
    config, model_class, per_block = {
        "gpt2": (transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64), "GPT2LMHeadModel", 4),
        "llama": (transformers.LlamaConfig(**shape, intermediate_size=64), "LlamaForCausalLM", 7),
        "olmo2": (transformers.Olmo2Config(**shape, intermediate_size=64), "Olmo2ForCausalLM", 7),
    }[family]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config)
    spectra = weight_spectra(model)
    assert len(spectra) == 2 * per_block and {s.layer for s in spectra} == {1, 2}
    assert all(len(s.eigs) == min(s.shape) and math.isfinite(s.fit.alpha) for s in spectra)


@pytest.mark.parametrize("parallel, name", [("fsdp", "FSDP"), ("zero3", "ZeRO-3")])
def test_weight_spectra_under_sharded_weights_are_refused_by_name(parallel, name):
    """Under FSDP or ZeRO-3 each process holds a shard of every matrix: its spectra would be a shard's."""
    from hydra import compose, initialize

    from geomsweep.config.checks import check
    from geomsweep.config.errors import ConfigError

    with initialize(version_base="1.3", config_path="../conf"):
        with pytest.raises(ConfigError, match=f"probe.weights=true under {name}: .* valid: probe.weights=false"):
            check(compose("config", overrides=["method=dpo", f"parallel={parallel}", "probe.weights=true"]))
        assert check(compose("config", overrides=["method=dpo", "parallel=ddp", "probe.weights=true"])).probe.weights
        assert not check(compose("config", overrides=["method=dpo", f"parallel={parallel}"])).probe.weights
