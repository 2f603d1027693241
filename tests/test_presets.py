"""Model and checkpoint presets: every one composes; hub revisions; offline behaviour; sharding."""

import json

import pytest
from hydra import compose, initialize_config_dir

from geomsweep.config.checks import check
from geomsweep.sources import checkpoints as ckpts
from geomsweep.sources import models, revisions
from tests.conftest import REPO, run_app

CONF = REPO / "conf"


def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("model", presets("model"))
def test_every_model_preset_composes(model):
    needs = {"local": "model.path=/x", "mlflow": "model.uri=runs:/0123456789abcdef/model"}  # the user's own value
    cfg = composed(f"model={model}", needs.get(model, "seed=0"))
    assert check(cfg).model.name == model  # composed and checked: the schema's every rule, TRL's fields
    if cfg.model.source == "hub":
        hub_ids = [s.hub_id for s in cfg.model.stages] if cfg.model.stages else [cfg.model.hub_id]
        assert all(h.count("/") == 1 for h in hub_ids) and cfg.model.width > 0 and cfg.model.depth > 0
        assert cfg.model.trust_remote_code is False and cfg.model.dtype in ("float16", "bfloat16")
        assert cfg.model.stages or cfg.model.revisions in ("pythia", "refs")
        # every hub model is measured the study's way: FineWeb texts of > 32 tokens, 15,000 x 512, 2,048 eigenvalues
        assert (cfg.data.name, cfg.data.config, cfg.data.min_tokens) == ("HuggingFaceFW/fineweb", "sample-10BT", 32)
        assert (cfg.probe.n_sequences, cfg.probe.max_length, cfg.probe.max_eigs) == (15000, 512, 2048)
        assert (cfg.probe.padding_side, cfg.probe.fit_start, cfg.probe.fit_end) == ("right", 12, 100)
    elif model not in ("tiny", "local", "mlflow"):  # a real model offline: real English, at 128 tokens or more
        assert cfg.data.source == "english" and cfg.data.min_tokens >= 127 and cfg.probe.max_length >= 128


def test_pythia_and_olmo_presets_are_all_there():
    names = set(presets("model"))
    sizes = ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]
    assert {f"pythia-{s}" for s in sizes} | {f"pythia-{s}-deduped" for s in sizes} <= names
    assert {"olmo-1b", "olmo-7b", "olmo2-1b", "olmo2-7b"} <= names


@pytest.mark.parametrize("group", ["checkpoint", "method", "sampler", "task", "tracking", "probe", "eval", "data"])
def test_every_other_preset_composes(group):
    for name in presets(group):
        extra = {
            "step": ["checkpoint.step=1"],
            "steps": ["checkpoint.steps=[1]"],
            "every": ["checkpoint.every=1000"],
            "files": ["data.path=/x"] if group == "data" else [],
        }.get(name, [])
        settings = check(composed(f"{group}={name}", *extra))  # a preset the schema refuses fails here
        assert getattr(settings, group) is not None


@pytest.mark.parametrize("overrides", [[], *([f"+experiment={name}"] for name in presets("experiment"))])
def test_the_default_and_every_experiment_compose_into_a_valid_toy_and_probe(overrides):
    from geomsweep.sources.toy.pretrain import ToyConfig

    cfg = composed(*overrides)
    toy = ToyConfig.from_cfg(cfg.model.toy)  # unknown toy fields are refused here
    assert cfg.probe.fit_end < toy.hidden_size  # the alpha-ReQ fit lies inside the spectrum
    assert max(cfg.eval.ablation_k) < toy.hidden_size  # so does the tail ablation


def test_the_toy_preset_is_the_toy_dataclass_default_and_picks_a_fit_inside_its_width():
    from omegaconf import OmegaConf

    from geomsweep.sources.toy.pretrain import ToyConfig

    default = composed()
    assert ToyConfig.from_cfg(default.model.toy) == ToyConfig()
    assert (default.probe.fit_start, default.probe.fit_end, list(default.eval.ablation_k)) == (3, 14, [2, 8])
    hub = composed("model=pythia-70m")  # other models keep the study's fit range and the paper's K
    assert (hub.probe.fit_start, hub.probe.fit_end, list(hub.eval.ablation_k)) == (12, 100, [10, 50])
    chosen = composed("probe=last_token", "eval=default")  # the command line still wins over the preset's picks
    assert chosen.probe.fit_end == 100 and list(chosen.eval.ablation_k) == [10, 50]
    assert OmegaConf.to_container(composed("probe.fit_end=12").probe)["fit_end"] == 12


def test_pythia_revisions_and_tokens():
    names = revisions.pythia_revisions()
    assert len(names) == 154 and names[:3] == ["step0", "step1", "step2"] and names[-1] == "step143000"
    cfg = composed("model=pythia-70m").model
    found = [ckpts.Checkpoint(n, *revisions.parse_revision(n), cfg.hub_id) for n in names]
    assert [c.step for c in found] == sorted(c.step for c in found)


def test_olmo_revisions_come_from_the_cached_branch_list(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "allenai/OLMo-2-0425-1B"
    with pytest.raises(RuntimeError, match="cannot list the revisions of 'allenai/OLMo-2-0425-1B'.*model=local"):
        revisions.cached_refs(hub_id, str(tmp_path))
    cache = revisions.refs_cache(hub_id, str(tmp_path))
    cache.parent.mkdir(parents=True)
    cache.write_text(
        json.dumps(
            [
                "main",
                "stage1-step20000-tokens42B",
                "stage1-step1000-tokens3B",
                "stage2-ingredient1-step1000-tokens5B",
                "step5000-tokens21B",
            ]
        )
    )
    names = revisions.cached_refs(hub_id, str(tmp_path))
    assert names == ["stage1-step1000-tokens3B", "step5000-tokens21B", "stage1-step20000-tokens42B"]
    assert revisions.parse_revision(names[-1]) == (20000, 42 * 10**9)


def pythia_checkpoints() -> list[ckpts.Checkpoint]:
    return [
        ckpts.Checkpoint(n, *revisions.parse_revision(n), "EleutherAI/pythia-70m") for n in revisions.pythia_revisions()
    ]


def test_checkpoint_presets_select_from_pythias_list():
    pythia = pythia_checkpoints()
    paper = composed("checkpoint=pythia_paper").checkpoint
    chosen = revisions.select(pythia, paper.select, paper.steps)
    assert [c.step for c in chosen][:11] == [0] + [2**i for i in range(10)] and chosen[-1].step == 143000
    log = [c.step for c in revisions.select(pythia, "log", num=24)]
    assert log[0] == 0 and log[-1] == 143000 and log == sorted(log) and 12 <= len(log) <= 24
    gaps = [b / a for a, b in zip(log[1:], log[2:])]  # roughly even in log-step once past the dense early steps
    assert max(gaps) < 3 * min(g for g in gaps if g > 1)
    every = [c.step for c in revisions.select(pythia, "every", every=10000)]
    assert every == [0, *range(10000, 140001, 10000), 143000]


def test_shards_split_a_checkpoint_list_round_robin():
    cps = [ckpts.Checkpoint(f"step{s}", s, None, "x") for s in (0, 1, 3, 12, 40)]
    assert [c.step for c in revisions.shard(cps, 0, 2)] == [0, 3, 40]
    assert [c.step for c in revisions.shard(cps, 1, 2)] == [1, 12]
    assert revisions.shard(cps, 0, 1) == cps


@pytest.mark.slow
def test_a_hub_preset_fails_fast_offline_with_what_to_do(tmp_path, cache_dir, store, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = run_app(["model=pythia-70m", "checkpoint=final", "progress=false"], tmp_path, cache_dir, store, check=False)
    assert proc.returncode == 1
    assert "model pythia-70m (EleutherAI/pythia-70m) is not available offline" in proc.stderr
    assert "model=local model.path=<dir>" in proc.stderr
    import mlflow

    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])
    assert run.info.status == "FAILED" and "not available offline" in run.data.tags["geomsweep.error"]


def test_the_authors_pythia_alpha_script_is_a_preset_pair():
    cfg = composed("model=pythia-1b", "data=wikitext", "probe=paper_pythia")
    assert (cfg.data.name, cfg.data.config, cfg.data.min_tokens) == ("Salesforce/wikitext", "wikitext-103-raw-v1", 10)
    assert (cfg.probe.max_length, cfg.probe.batch_size, cfg.probe.fit_start, cfg.probe.fit_end) == (128, 1, 12, 100)


@pytest.mark.slow
def test_the_offline_english_texts_fill_the_probe_of_a_real_model(cache_dir):
    """model=smollm2-135m alone: data=english under SmolLM2's own tokenizer gives probe=english's 768 texts, each
    of more than 127 tokens, so every one fills the 128-token probe."""
    pytest.importorskip("gguf", reason="model=smollm2-135m needs the smollm2 extra (make install)")
    from geomsweep.sources.data import probe_texts

    cfg = composed("model=smollm2-135m")
    (checkpoint,) = models.available(cfg.model, str(cache_dir))
    tokenizer = checkpoint.load_tokenizer()
    texts = probe_texts(cfg.data, None, cfg.probe.n_sequences, tokenizer=tokenizer)
    assert len(texts) == cfg.probe.n_sequences == 768 and cfg.probe.max_length == 128
    assert min(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) >= 128


@pytest.mark.parametrize(
    ("gpu", "model", "tasks"), [(True, "pythia-1b", ["sciq", "triviaqa"]), (False, "pythia-1b", [])]
)
def test_hub_presets_score_the_papers_tasks_on_a_cuda_machine(tmp_path, monkeypatch, gpu, model, tasks):
    if gpu:  # a machine with a CUDA GPU has nvidia-smi on its PATH
        (tmp_path / "nvidia-smi").write_text("#!/bin/sh\n")
        (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path) if gpu else "/nonexistent")
    assert check(composed(f"model={model}")).eval.harness.tasks == tasks
    assert check(composed("model=local", "model.path=/x")).eval.harness.tasks == []  # the hub's presets only
    assert check(composed()).eval.harness.tasks == ["toy_recall", "toy_arithmetic"]  # the toy's own


@pytest.mark.parametrize(
    ("gpu", "offline", "items"), [(True, "", "triviaqa"), (True, "1", None), (False, "", None)], ids=str
)
def test_hub_presets_ask_the_infini_gram_api_for_memorization_on_a_cuda_machine_online(
    tmp_path, monkeypatch, gpu, offline, items
):
    if gpu:
        (tmp_path / "nvidia-smi").write_text("#!/bin/sh\n")
        (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path) if gpu else "/nonexistent")
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    memorization = check(composed("model=pythia-1b")).eval.memorization
    assert (memorization.items, memorization.engine) == (items, "api")
    assert memorization.index_name == "v4_piletrain_llama"  # the Pile, which Pythia saw, as the paper
    toy = check(composed()).eval.memorization
    assert (toy.items, toy.engine, toy.index, toy.limit) == ("toy", "local", None, 2000)  # the toy's own index
