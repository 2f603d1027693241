"""The typed config: bad values stop at once, in one line, before any model loads or any MLflow run opens."""

import subprocess
import sys
import textwrap

import mlflow
import pytest
from hydra import compose, initialize_config_dir

from geomsweep.config.checks import check
from geomsweep.config.errors import ConfigError
from geomsweep.config.schema import Config
from tests.conftest import REPO, TINY, run_app


def composed(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


BAD = [
    # (overrides, what stderr must say): wrong types and choices (OmegaConf, at composition) ...
    (["probe.n_sequences=abc"], ["probe.n_sequences=abc", "could not be converted to Integer"]),
    (["probe.norm=mid"], ["probe.norm=mid", "expected one of [post, pre]"]),
    # ... ranges and relations (the schema's checks, right after composition) ...
    (["probe.batch_size=0"], ["geomsweep: invalid config: probe.batch_size=0 must be >= 1"]),
    (["sampler.batch_size=0"], ["geomsweep: invalid config: sampler.batch_size=0 must be >= 1"]),
    (
        ["checkpoint=log", "checkpoint.num=1"],
        ["geomsweep: invalid config: checkpoint.num=1 must be an integer >= 2 for checkpoint.select=log"],
    ),
    (
        ["checkpoint=every", "checkpoint.every=0"],
        ["geomsweep: invalid config: checkpoint.every=0 must be a positive integer for checkpoint.select=every"],
    ),
    (
        ["checkpoint.num_shards=2", "checkpoint.shard=2"],
        ["geomsweep: invalid config: checkpoint.shard=2 must lie in 0..checkpoint.num_shards-1 (num_shards=2)"],
    ),
    (
        ["probe.n_sequences=10"],
        ["probe.n_sequences=10 is too few for the alpha-ReQ fit range 2..20: it needs at least 21"],
    ),
    (["method.name=ppo"], ["unknown method 'ppo'; valid: none, sft, dpo, rlvr"]),
    # ... keys the schema does not declare, even when added with '+' ...
    (
        ["+probe.n_sequence=64"],
        ["geomsweep: invalid config: unknown config keys ['probe.n_sequence'] (added with '+')"],
    ),
    (["tracking.experiment="], ["geomsweep: invalid config: tracking.experiment='' must name an experiment"]),
    (["tflops=-5"], ["geomsweep: invalid config: tflops=-5.0 must be > 0"]),
    (["prefetch=sometimes"], ["geomsweep: invalid config: prefetch='sometimes'; valid: auto, true, false"]),
    (["sampler.ks=[]"], ["geomsweep: invalid config: sampler.ks=[] names no k"]),
    (["method=sft", "method.args.max_steps=0"], ["geomsweep: invalid config: method.args.max_steps=0 trains nothing"]),
    # ... and method.args against the TRL config class they go to
    (
        ["method=sft", "method.args.learning_rate=abc"],
        ["geomsweep: invalid config: method.args.learning_rate='abc' is not float (SFTConfig.learning_rate)"],
    ),
    (
        ["method=dpo", "+method.args.lerning_rate=0.1"],
        ["method.args has ['lerning_rate'], not fields of trl.DPOConfig"],
    ),
]


@pytest.mark.parametrize("overrides, messages", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_value_stops_before_any_model_load_or_run(tmp_path, overrides, messages):
    """Each bad value exits non-zero naming the key and the value; no store is created and the (empty) model
    cache stays empty: nothing was pretrained or loaded."""
    cache = tmp_path / "cache"
    cache.mkdir()
    store = tmp_path / "mlflow.db"
    proc = run_app([*TINY, *overrides], tmp_path, cache, f"sqlite:///{store}", check=False)
    assert proc.returncode != 0
    for message in messages:
        assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not store.exists() and not any(cache.iterdir())


def test_range_errors_are_one_line():
    with pytest.raises(ConfigError) as caught:
        check(composed("probe.batch_size=0"))
    assert str(caught.value) == "probe.batch_size=0 must be >= 1"


def test_every_default_is_typed_and_checked_once():
    settings = check(composed())
    assert isinstance(settings, Config)
    assert (settings.probe.n_sequences, settings.probe.fit_start, settings.probe.fit_end) == (1024, 3, 14)
    assert settings.phases.min_change == 0.15 and settings.sampler.seed == settings.seed == 0
    assert settings.model.toy.hidden_size == 16 and settings.method.name == "none"
    assert check(composed("seed=5")).sampler.seed == 5  # the sampler's seed follows the job's


def test_post_training_from_several_checkpoints_says_it_needs_one(tmp_path, cache_dir, tiny_checkpoints, store):
    proc = run_app(["method=sft", "checkpoint=log", *TINY], tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0
    assert "method=sft post-trains one base checkpoint, but checkpoint.select=log picks" in proc.stderr


def test_a_plain_hydra_app_beside_geomsweep_gets_no_geomsweep_tags(tmp_path, store):
    """geomsweep's run-context provider is installed for the whole environment; it must tag only its own runs."""
    app = tmp_path / "other_app.py"
    app.write_text(
        textwrap.dedent("""
        import hydra
        import mlflow
        from omegaconf import DictConfig

        @hydra.main(version_base="1.3", config_path=None)
        def main(cfg: DictConfig) -> None:
            with mlflow.start_run() as run:
                mlflow.log_metric("x", 1.0)
            print(run.info.run_id)

        main()
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(app)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": store},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = mlflow.MlflowClient(store).get_run(proc.stdout.split()[-1])
    assert run.data.metrics == {"x": 1.0}
    assert not [key for key in run.data.tags if key.startswith("geomsweep.")]


def test_a_sweep_with_one_bad_cell_does_not_start(tmp_path):
    """Every cell is checked before the sweep parent exists: nothing runs, nothing is logged."""
    cache = tmp_path / "cache"
    cache.mkdir()
    store = tmp_path / "mlflow.db"
    proc = run_app(["-m", *TINY, "probe.batch_size=8,0"], tmp_path, cache, f"sqlite:///{store}", check=False)
    assert proc.returncode != 0
    assert "geomsweep: invalid config in cell" in proc.stderr and "probe.batch_size=0 must be >= 1" in proc.stderr
    assert not store.exists() and not any(cache.iterdir())
