"""Revision names, hub-style local layouts, and checkpoint selection."""

import shutil

import pytest

from geomsweep import checkpoints as ckpts


@pytest.mark.parametrize("name, expected", [
    ("step0", (0, None)),
    ("step143000", (143000, None)),
    ("step1000-tokens4B", (1000, 4 * 10**9)),
    ("stage1-step5000-tokens21B", (5000, 21 * 10**9)),
])
def test_parse_revision(name, expected):
    assert ckpts.parse_revision(name) == expected


def test_parse_revision_rejects_other_names():
    with pytest.raises(ValueError, match="cannot read a step from revision 'main'"):
        ckpts.parse_revision("main")


def test_toy_cache_is_a_hub_style_mirror(tiny_checkpoints):
    found = ckpts.local_revisions(tiny_checkpoints, tokens_per_step=100)
    steps = [c.step for c in found]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 40
    assert all(c.tokens == c.step * 100 for c in found)
    assert (tiny_checkpoints / "step40" / "model.safetensors").exists()


def test_olmo_style_mirror_and_single_model_dir(tiny_checkpoints, tmp_path):
    for name, src in [("stage1-step20-tokens1B", "step0"), ("stage1-step3-tokens0B", "step1")]:
        shutil.copytree(tiny_checkpoints / src, tmp_path / "olmo" / name)
    found = ckpts.local_revisions(tmp_path / "olmo", tokens_per_step=None)
    assert [(c.revision, c.step, c.tokens) for c in found] == [
        ("stage1-step3-tokens0B", 3, 0), ("stage1-step20-tokens1B", 20, 10**9)]
    single = ckpts.local_revisions(tiny_checkpoints / "step40", None)
    assert [c.revision for c in single] == ["final"]
    model, tokenizer = found[-1].load()
    assert model.config.hidden_size == 32 and tokenizer.eos_token == "<eos>"


def test_missing_and_empty_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"model.path '{tmp_path / 'nope'}' does not exist"):
        ckpts.local_revisions(tmp_path / "nope", None)
    with pytest.raises(FileNotFoundError, match="holds neither a model"):
        ckpts.local_revisions(tmp_path, None)


def test_select(tiny_checkpoints):
    found = ckpts.local_revisions(tiny_checkpoints, None)
    assert ckpts.select(found, "all") == found
    assert [c.step for c in ckpts.select(found, "final")] == [40]
    assert [c.step for c in ckpts.select(found, "steps", [40, 0])] == [40, 0]
    with pytest.raises(ValueError, match=r"steps \[7\] that are not available; valid steps: \[0, "):
        ckpts.select(found, "steps", [0, 7])
    with pytest.raises(ValueError, match="unknown checkpoint.select 'some'; valid: all, final, steps"):
        ckpts.select(found, "some")
