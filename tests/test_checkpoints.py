"""Revision names, hub-style local layouts, and checkpoint selection."""

import shutil

import pytest
import torch

from geomsweep.sources import checkpoints as ckpts
from geomsweep.sources import revisions


@pytest.mark.parametrize(
    "name, expected",
    [
        ("step0", (0, None)),
        ("step143000", (143000, None)),
        ("step1000-tokens4B", (1000, 4 * 10**9)),
        ("stage1-step5000-tokens21B", (5000, 21 * 10**9)),
    ],
)
def test_parse_revision(name, expected):
    assert revisions.parse_revision(name) == expected


def test_parse_revision_rejects_other_names():
    with pytest.raises(ValueError, match="cannot read a step from revision 'main'"):
        revisions.parse_revision("main")


def test_toy_cache_is_a_hub_style_mirror(tiny_checkpoints):
    found = revisions.local_revisions(tiny_checkpoints, tokens_per_step=100)
    steps = [c.step for c in found]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 40
    assert all(c.tokens == c.step * 100 for c in found)
    assert (tiny_checkpoints / "step40" / "model.safetensors").exists()


def test_olmo_style_mirror_and_single_model_dir(tiny_checkpoints, tmp_path):
    for name, src in [("stage1-step20-tokens1B", "step0"), ("stage1-step3-tokens0B", "step1")]:
        shutil.copytree(tiny_checkpoints / src, tmp_path / "olmo" / name)
    found = revisions.local_revisions(tmp_path / "olmo", tokens_per_step=None)
    assert [(c.revision, c.step, c.tokens) for c in found] == [
        ("stage1-step3-tokens0B", 3, 0),
        ("stage1-step20-tokens1B", 20, 10**9),
    ]
    single = revisions.local_revisions(tiny_checkpoints / "step40", None)
    assert [c.revision for c in single] == ["final"]
    model, tokenizer = found[-1].load()
    assert model.config.hidden_size == 32 and tokenizer.eos_token == "<eos>"


def test_missing_and_empty_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"model.path '{tmp_path / 'nope'}' does not exist"):
        revisions.local_revisions(tmp_path / "nope", None)
    with pytest.raises(FileNotFoundError, match="holds neither a model"):
        revisions.local_revisions(tmp_path, None)


def test_select(tiny_checkpoints):
    found = revisions.local_revisions(tiny_checkpoints, None)
    assert revisions.select(found, "all") == found
    assert [c.step for c in revisions.select(found, "final")] == [40]
    assert [c.step for c in revisions.select(found, "steps", [40, 0])] == [40, 0]
    with pytest.raises(ValueError, match=r"steps \[7\] that are not available; valid steps: \[0, "):
        revisions.select(found, "steps", [0, 7])
    with pytest.raises(ValueError, match="unknown checkpoint.select 'some'; valid: all, final, steps"):
        revisions.select(found, "some")


@pytest.mark.parametrize("prefetch", [False, True])
def test_checkpoints_stream_in_order_with_or_without_prefetch(tiny_checkpoints, prefetch):
    from geomsweep.core.extract import accumulate, encode_batches
    from geomsweep.core.spectra import spectral_geometry
    from geomsweep.sources.toy.pretrain import ToyConfig, probe_documents
    from tests.conftest import TINY_TOY

    texts = probe_documents(ToyConfig(**TINY_TOY), 32)

    def rankme(model, tokenizer):
        reps = accumulate(model, encode_batches(tokenizer, texts, 16, 48), progress=False)
        return spectral_geometry(reps.covariances[-1], fit_start=2, fit_end=20).rankme

    found = revisions.local_revisions(tiny_checkpoints, None)
    streamed = [(c.step, rankme(m, t)) for c, m, t in ckpts.loaded(found, "cpu", "float32", prefetch=prefetch)]
    one_by_one = [(c.step, rankme(*c.load())) for c in found]
    assert streamed == one_by_one


def test_prefetch_auto_is_on_for_gpus_only():
    from geomsweep.trace.pipeline import resolve_prefetch

    assert resolve_prefetch("auto", "cuda:0") and not resolve_prefetch("auto", "cpu")
    assert resolve_prefetch(True, "cpu") and not resolve_prefetch(False, "cuda")


def test_device_map_loading_measures_the_same_geometry(tiny_checkpoints):
    """``device_map=auto`` hands placement to accelerate (on this CPU-only machine: everything on the CPU)."""
    from geomsweep.core.extract import accumulate, encode_batches
    from geomsweep.sources.toy.pretrain import ToyConfig, probe_documents
    from tests.conftest import TINY_TOY

    texts = probe_documents(ToyConfig(**TINY_TOY), 32)
    final = revisions.local_revisions(tiny_checkpoints, None)[-1]
    plain, dispatched = final.load(), final.load(device_map="auto")
    reps = [accumulate(m, encode_batches(t, texts, 16, 48), progress=False) for m, t in (plain, dispatched)]
    assert torch.allclose(reps[0].covariances[-1].compute(), reps[1].covariances[-1].compute(), atol=1e-6)
    assert reps[0].loss == pytest.approx(reps[1].loss, rel=1e-6)
