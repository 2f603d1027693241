"""The bad-input and fault battery: each case exits non-zero (or ends its run as documented) with a message that
names the bad value or file, never hangs, and leaves no run RUNNING."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, TINY_PROBE, run_app, runs_of

GEOMETRY = [*TINY, "eval.toy_n_docs=0", "sampler.n=0"]


@pytest.mark.parametrize("where", ["/proc/geomsweep-x.db", "FILE/mlflow.db"], ids=["under-proc", "under-a-file"])
def test_an_unwritable_store_fails_at_once_naming_it(tmp_path, cache_dir, where):
    (tmp_path / "FILE").write_text("a regular file, not a directory")
    path = where.replace("FILE", str(tmp_path / "FILE"))
    start = time.monotonic()
    proc = run_app(GEOMETRY, tmp_path, cache_dir, f"sqlite:///{path}", check=False)
    assert proc.returncode != 0 and time.monotonic() - start < 60
    assert f"geomsweep: cannot write the MLflow store {path}" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sigterm_ends_the_run_killed_and_a_rerun_completes_the_cell(tmp_path, cache_dir, tiny_checkpoints, store):
    env = {**os.environ, "GEOMSWEEP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": store}
    with open(tmp_path / "job.log", "w") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "geomsweep", *GEOMETRY], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and job.poll() is None:
            try:
                if any(r.info.status == "RUNNING" for r in runs_of(store, "job")):
                    break
            except Exception:  # the store or the experiment does not exist yet
                pass
            time.sleep(0.2)
        assert job.poll() is None, "the job ended before it could be terminated"
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=120) == 128 + signal.SIGTERM
    (run,) = runs_of(store, "job")
    assert run.info.status == "KILLED" and "terminated by SIGTERM" in run.data.tags["geomsweep.error"]
    run_app(GEOMETRY, tmp_path, cache_dir, store)
    assert sorted(r.info.status for r in runs_of(store, "job")) == ["FINISHED", "KILLED"]


def test_a_checkpoint_with_nan_weights_gets_nan_metrics_and_a_tag_naming_it(
    tmp_path, cache_dir, tiny_checkpoints, store
):
    """A trace goes on past a broken checkpoint: its metrics are NaN and geomsweep.nonfinite names it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = sorted(tiny_checkpoints.glob("step*"), key=lambda p: int(p.name[4:]))[-1]
    model = AutoModelForCausalLM.from_pretrained(final)
    with __import__("torch").no_grad():
        model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight[0, 0] = float("nan")
    broken = tmp_path / "broken"
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(final).save_pretrained(broken)
    run_app(
        [*TINY_PROBE, "progress=false", "sampler.n=0", "model=local", f"model.path={broken}"],
        tmp_path,
        cache_dir,
        store,
    )
    (run,) = runs_of(store, "job")
    assert run.info.status == "FINISHED"
    assert run.data.tags["geomsweep.nonfinite"] == "non-finite representations at step 0 (final)"
    assert math.isnan(run.data.metrics["geometry/rankme"]) and math.isnan(run.data.metrics["geometry/alpha_req"])


@pytest.mark.slow
def test_a_diverging_post_training_run_stops_naming_the_step(tmp_path, cache_dir, tiny_checkpoints, store):
    args = [
        *GEOMETRY,
        "method=sft",
        "method.args.learning_rate=1e6",
        "method.args.max_steps=3",
        "method.geometry_every=1",
        "method.args.per_device_train_batch_size=4",
    ]
    proc = run_app(args, tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0
    (run,) = runs_of(store, "job")
    assert run.info.status == "FAILED"
    assert "non-finite representations at post-training step" in run.data.tags["geomsweep.error"]


BAD_FILES = {
    "empty.txt": (b"", "is empty"),
    "binary.txt": (bytes(range(256)) * 4, "is not UTF-8 text (byte 0x80 at offset 128)"),
    "latin1.txt": ("café crème brûlée\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 3)"),
    "broken.jsonl": (b'{"text": "fine"}\n{"text": "no end\n', "line 2 is not valid JSON"),
    "broken.json": (b'{"text": [1, 2', "is not valid JSON"),
    "garbage.parquet": (b"this is not parquet at all", "is not a Parquet file"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_probe_file_is_named_with_its_cause(tmp_path, cache_dir, tiny_checkpoints, store, name):
    content, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    proc = run_app([*GEOMETRY, "data=files", f"data.path={path}"], tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0
    assert f"data.path '{path}'" in proc.stderr and message in proc.stderr
    (run,) = runs_of(store, "job")
    assert run.info.status == "FAILED" and message in run.data.tags["geomsweep.error"]


def test_a_bad_task_file_is_named_with_its_cause(tmp_path):
    from geomsweep.tasks import load_split

    path = tmp_path / "gsm8k.jsonl"
    path.write_bytes(BAD_FILES["broken.jsonl"][0])
    with pytest.raises(ValueError, match=rf"task.path '{path}': line 2 is not valid JSON"):
        load_split({"source": "files", "path": str(path), "schema": "gsm8k"})


class RunsCode:
    """A pickled object whose unpickling would call a function: what a malicious .bin checkpoint holds."""

    def __reduce__(self):
        return (print, ("this ran while unpickling",))


def damaged_copy(tiny_checkpoints, tmp_path, damage: str):
    final = sorted(tiny_checkpoints.glob("step*"), key=lambda p: int(p.name[4:]))[-1]
    copy = tmp_path / damage
    shutil.copytree(final, copy)
    weights = copy / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "bad-config":
        (copy / "config.json").write_text('{"model_type": "gpt_neox", ')
    elif damage == "pickle":
        import torch

        weights.unlink()
        torch.save({"gpt_neox.embed_in.weight": RunsCode()}, copy / "pytorch_model.bin")
    return copy


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", "the files there are damaged or incomplete"),
        ("bad-config", "the files there are damaged or incomplete"),
        ("pickle", "its pickled weights hold objects other than tensors"),
    ],
)
def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, tiny_checkpoints, damage, message):
    from geomsweep.checkpoints import Checkpoint

    copy = damaged_copy(tiny_checkpoints, tmp_path, damage)
    with pytest.raises(RuntimeError, match=message) as caught:
        Checkpoint("final", 0, None, str(copy)).load()
    assert f"model '{copy}' revision 'final'" in str(caught.value)
    assert "weights_only=False" not in str(caught.value) and "download it elsewhere" not in str(caught.value)


def test_trust_remote_code_reaches_the_loader(tmp_path, tiny_checkpoints, monkeypatch):
    from geomsweep import checkpoints

    seen = []
    real = checkpoints.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        checkpoints.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: seen.append(k) or real(*a, **k)
    )
    final = sorted(tiny_checkpoints.glob("step*"), key=lambda p: int(p.name[4:]))[-1]
    checkpoints.Checkpoint("final", 0, None, str(final)).load(trust_remote_code=True)
    assert seen[-1]["trust_remote_code"] is True and seen[-1]["use_safetensors"] is True


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_before_any_run(tmp_path, cache_dir, store):
    proc = run_app([*GEOMETRY, "device=cuda"], tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "geomsweep: invalid config: device=cuda but this machine has no CUDA device" in proc.stderr
    assert not Path(store.removeprefix("sqlite:///")).exists()  # no store, no run


@pytest.mark.slow
def test_an_edited_probe_file_makes_a_new_cell(tmp_path, cache_dir, tiny_checkpoints, store):
    """The cell's identity includes the content of the files it reads: an edit runs it again, no edit skips it."""
    path = tmp_path / "probe.txt"
    path.write_text("\n".join(f"sum {a} plus {b} is {a + b} ." for a in range(10) for b in range(10)))
    args = [*GEOMETRY, "checkpoint=final", "data=files", f"data.path={path}"]
    run_app(args, tmp_path, cache_dir, store)
    assert "already FINISHED" in run_app(args, tmp_path, cache_dir, store).stdout
    path.write_text(path.read_text().replace("sum 0 plus 1 is 1", "sum 0 plus 1 is 2"))  # a line the probe reads
    run_app(args, tmp_path, cache_dir, store)
    runs = runs_of(store, "job")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert len({r.data.tags["geomsweep.config_hash"] for r in runs}) == 2
    assert len({r.data.tags["geomsweep.probe_digest"] for r in runs}) == 2  # and each run shows what it read
