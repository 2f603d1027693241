"""The bad-input and fault battery: each case exits non-zero (or ends its run as documented) with a message that
names the bad value or file, never hangs, and leaves no run RUNNING."""

import json
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

GEOMETRY = [*TINY, "eval.toy_n_docs=0", "eval.memorization.items=null", "sampler.n=0"]


@pytest.mark.parametrize("where", ["/proc/geomsweep-x.db", "FILE/mlflow.db"], ids=["under-proc", "under-a-file"])
def test_an_unwritable_store_fails_at_once_naming_it(tmp_path, cache_dir, where):
    (tmp_path / "FILE").write_text("a regular file, not a directory")
    path = where.replace("FILE", str(tmp_path / "FILE"))
    start = time.monotonic()
    proc = run_app(GEOMETRY, tmp_path, cache_dir, f"sqlite:///{path}", check=False)
    assert proc.returncode != 0 and time.monotonic() - start < 60
    assert f"geomsweep: cannot write the MLflow store {path}" in proc.stderr and "Traceback" not in proc.stderr


def wait_for_a_running_job(proc: subprocess.Popen, store: str) -> None:
    """Until a job run of ``store`` is RUNNING (the moment to send a signal); the process must still run then."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if any(r.info.status == "RUNNING" for r in runs_of(store, "job")):
                break
        except Exception:  # the store or the experiment does not exist yet
            pass
        time.sleep(0.2)
    assert proc.poll() is None, "the process ended before it could be signalled"


@pytest.mark.faults
def test_sigterm_ends_the_run_killed_and_a_rerun_completes_the_cell(tmp_path, cache_dir, tiny_checkpoints, store):
    env = {**os.environ, "GEOMSWEEP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": store}
    with open(tmp_path / "job.log", "w") as log:
        # a probe set long enough that the job is still measuring when the signal lands (at 64 texts it could
        # finish between seeing the run RUNNING and the signal)
        long = [*GEOMETRY, "probe.n_sequences=4096"]
        job = subprocess.Popen(
            [sys.executable, "-m", "geomsweep", *long], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        wait_for_a_running_job(job, store)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=120) == 128 + signal.SIGTERM
    (run,) = runs_of(store, "job")
    assert run.info.status == "KILLED" and "terminated by SIGTERM" in run.data.tags["geomsweep.error"]
    run_app(long, tmp_path, cache_dir, store)
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
    from geomsweep.sources.tasks import load_split

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
    from geomsweep.sources.checkpoints import Checkpoint

    copy = damaged_copy(tiny_checkpoints, tmp_path, damage)
    with pytest.raises(RuntimeError, match=message) as caught:
        Checkpoint("final", 0, None, str(copy)).load()
    assert f"model '{copy}' revision 'final'" in str(caught.value)
    assert "weights_only=False" not in str(caught.value) and "download it elsewhere" not in str(caught.value)


def test_trust_remote_code_reaches_the_loader(tmp_path, tiny_checkpoints, monkeypatch):
    from geomsweep.sources import checkpoints

    seen = []
    real = checkpoints.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        checkpoints.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: seen.append(k) or real(*a, **k)
    )
    final = sorted(tiny_checkpoints.glob("step*"), key=lambda p: int(p.name[4:]))[-1]
    checkpoints.Checkpoint("final", 0, None, str(final)).load(trust_remote_code=True)
    assert seen[-1]["trust_remote_code"] is True and seen[-1]["use_safetensors"] is True


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_before_any_run(tmp_path, cache_dir, new_store):
    proc = run_app([*GEOMETRY, "device=cuda"], tmp_path, cache_dir, new_store, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "geomsweep: invalid config: device=cuda but this machine has no CUDA device" in proc.stderr
    assert not Path(new_store.removeprefix("sqlite:///")).exists()  # no store, no run


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


def hostile_model(root: Path, tiny_checkpoints: Path, marker: Path) -> Path:
    """A real model folder whose config.json names a model type of its own and code that, run, writes ``marker``."""
    folder = root / "hostile"
    shutil.copytree(tiny_checkpoints / "step40", folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "hostile_neox", "auto_map": {"AutoConfig": "configuration_hostile.HostileConfig"}}
    config["auto_map"]["AutoModelForCausalLM"] = "modeling_hostile.HostileModel"
    (folder / "config.json").write_text(json.dumps(config))
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "configuration_hostile.py").write_text(
        payload + "from transformers import GPTNeoXConfig as HostileConfig\n"
    )
    (folder / "modeling_hostile.py").write_text(
        payload + "from transformers import GPTNeoXForCausalLM as HostileModel\n"
    )
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "entry",
    [
        ["checkpoint=final"],
        ["checkpoint=final", "sampler.n=2"],
        ["method=sft"],
        ["method=sft", "plan=true"],
    ],
    ids=["trace", "sampler-hf", "sft", "plan"],
)
def test_a_model_folders_code_never_runs_unless_asked(tmp_path, cache_dir, tiny_checkpoints, new_store, entry):
    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = hostile_model(tmp_path, tiny_checkpoints, marker)
    env = {**os.environ, "GEOMSWEEP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": new_store}
    args = ["model=local", f"model.path={folder}", *TINY_PROBE, "progress=false", "sampler.n=0", *entry]
    proc = subprocess.run(
        [sys.executable, "-m", "geomsweep", *args],
        cwd=tmp_path,
        env=env,
        input="y\n" * 20,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not marker.exists(), proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "ships Python code of its own" in proc.stderr and "model.trust_remote_code=true" in proc.stderr
    assert not [r for r in runs_of(new_store) if r.info.status == "RUNNING"] if Path(new_store[10:]).exists() else True


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_sweep_with_a_cell_that_cannot_run_here_stops_before_any_cell(tmp_path, cache_dir, new_store):
    proc = run_app(["-m", "device=cpu,cuda", *GEOMETRY], tmp_path, cache_dir, new_store, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "geomsweep: invalid config in cell device=cuda" in proc.stderr and "no CUDA device" in proc.stderr
    assert not Path(new_store.removeprefix("sqlite:///")).exists()  # no store, no parent, no cell


@pytest.mark.slow
def test_a_sigtermed_sweep_leaves_no_run_running(tmp_path, cache_dir, tiny_checkpoints, store):
    env = {**os.environ, "GEOMSWEEP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": store}
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen(
            [sys.executable, "-m", "geomsweep", "-m", "seed=0,1,2", *GEOMETRY],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_a_running_job(sweep, store)
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(timeout=120) != 0
    runs = runs_of(store)
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("geomsweep.role") == "sweep"]
    assert parent.info.status == "KILLED" and "stopped before its last job" in parent.data.tags["geomsweep.error"]


def a_store(tmp_path) -> Path:
    """A real MLflow store with runs in it (the pre-move fixture's), as a sqlite file."""
    import gzip
    import sqlite3

    path = tmp_path / "mlflow.db"
    with sqlite3.connect(path) as db:
        db.executescript(gzip.decompress((REPO / "tests/data/pre_move_store.sql.gz").read_bytes()).decode())
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"", "is an empty file (0 bytes), not a store"),
        (lambda b: b[: len(b) // 2], "is damaged (sqlite: database disk image is malformed)"),
        (lambda b: b[:4096] + b"\xff" * 8192 + b[4096 + 8192 :], "is damaged (sqlite:"),
        (lambda b: b"not a database" * 400, "is damaged (sqlite: file is not a database)"),
    ],
    ids=["zero-bytes", "half-truncated", "damaged-pages", "not-sqlite"],
)
def test_a_damaged_store_is_refused_untouched(tmp_path, cache_dir, damage, message):
    path = a_store(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    before = path.read_bytes()
    start = time.monotonic()
    proc = run_app(GEOMETRY, tmp_path, cache_dir, f"sqlite:///{path}", check=False)
    assert proc.returncode != 0 and time.monotonic() - start < 60
    assert f"geomsweep: the MLflow store {path} {message}" in proc.stderr and "Traceback" not in proc.stderr
    assert path.read_bytes() == before  # nothing written into it, nothing replaced


def test_an_unwritable_toy_cache_fails_its_run_in_one_line(tmp_path, store):
    proc = run_app(GEOMETRY, tmp_path, Path("/proc/geomsweep-cache"), store, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cannot write the toy model's cache /proc/geomsweep-cache" in proc.stderr
    (run,) = runs_of(store, "job")
    assert run.info.status == "FAILED" and "GEOMSWEEP_CACHE" in run.data.tags["geomsweep.error"]


def test_a_toy_cache_locked_by_a_dead_process_names_the_lock(tmp_path, monkeypatch, capsys):
    from geomsweep.sources.toy import pretrain
    from tests.conftest import TINY_TOY

    toy = pretrain.ToyConfig(**TINY_TOY)
    lock = str(toy.directory(tmp_path)) + ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; from filelock import FileLock; held = FileLock({lock!r}); held.acquire(); "
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(pretrain, "LOCK_TIMEOUT_S", 1)
        with pytest.raises(RuntimeError, match=f"one died holding the lock: delete {lock}"):
            pretrain.ensure_pretrained(toy, tmp_path, progress=False)
        assert (
            f"geomsweep: waiting for another process pretraining {toy.directory(tmp_path)}" in capsys.readouterr().out
        )
    finally:
        holder.kill()


def a_fifo(root: Path) -> Path:
    os.mkfifo(root / "pipe")
    return root / "pipe"


def a_folder(root: Path, names: list[str]) -> Path:
    (root / "texts").mkdir()
    for name in names:
        (root / "texts" / name).write_text("some text\n")
    return root / "texts"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (a_fifo, "is neither a file nor a folder (a FIFO, socket or device)"),
        (lambda root: Path("/dev/null"), "is neither a file nor a folder (a FIFO, socket or device)"),
        (lambda root: a_folder(root, ["README", "notes.md"]), "holds no readable file (it holds: README, notes.md)"),
        (lambda root: a_folder(root, ["a.txt", "b.jsonl"]), "holds files of several types (.jsonl, .txt)"),
    ],
    ids=["fifo", "device", "no-readable-file", "mixed-types"],
)
def test_a_probe_path_that_is_no_data_is_named_plainly(tmp_path, cache_dir, tiny_checkpoints, store, make, message):
    path = make(tmp_path)
    start = time.monotonic()
    proc = run_app([*GEOMETRY, "data=files", f"data.path={path}"], tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0 and time.monotonic() - start < 120  # a FIFO is never opened (it would block)
    assert f"data.path '{path}' {message}" in proc.stderr and "Traceback" not in proc.stderr


def test_a_folder_of_texts_beside_a_readme_is_read_and_hashed_by_its_texts_alone(tmp_path):
    from types import SimpleNamespace

    from geomsweep.sources.data import data_files
    from geomsweep.tracking.identity import data_files_digest

    folder = a_folder(tmp_path, ["a.txt", "b.txt", "README"])
    assert data_files(str(folder)) == ([folder / "a.txt", folder / "b.txt"], ".txt")
    from geomsweep.config.measurement import EvalConfig

    settings = SimpleNamespace(
        data=SimpleNamespace(source="files", path=str(folder)),
        task=SimpleNamespace(source="arithmetic", ood=None),
        eval=EvalConfig(),
    )
    before = data_files_digest(settings)
    (folder / "README").write_text("edited: not a probe text")
    assert data_files_digest(settings) == before
    (folder / "a.txt").write_text("an edited probe text\n")
    assert data_files_digest(settings) != before


def test_the_english_windows_are_part_of_a_cells_identity(monkeypatch):
    """data=english reads this system's licence texts: the windows it cuts join the digest, so other windows (a
    changed cut, another system's licences) make another cell; the toy world adds nothing."""
    from types import SimpleNamespace

    from geomsweep.config.measurement import EvalConfig
    from geomsweep.sources import data
    from geomsweep.tracking import identity

    def settings(source):
        task = SimpleNamespace(source="arithmetic", ood=None)
        return SimpleNamespace(data=SimpleNamespace(source=source), task=task, eval=EvalConfig())

    english, toy = identity.data_files_digest(settings("english")), identity.data_files_digest(settings("toy"))
    assert english != toy and identity.data_files_digest(settings("english")) == english
    monkeypatch.setattr(identity, "english_windows", lambda: data.english_windows(words_per_text=110))
    assert identity.data_files_digest(settings("english")) not in (english, toy)


def test_a_model_folder_without_a_tokenizer_is_named(tmp_path, cache_dir, tiny_checkpoints, store):
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_checkpoints / "step40", folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    args = ["model=local", f"model.path={folder}", *TINY_PROBE, "progress=false", "sampler.n=0"]
    proc = run_app(args, tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"model '{folder}' revision 'final' has no tokenizer" in proc.stderr and "sentencepiece" not in proc.stderr


def test_a_server_port_held_by_another_program_is_named(tmp_path, cache_dir):
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = run_app([*GEOMETRY, "tracking=server", f"tracking.server.port={port}"], tmp_path, cache_dir, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"port {port} on 127.0.0.1 is held by another program" in proc.stderr
    assert "tracking.server.port=<port>" in proc.stderr


@pytest.mark.slow
def test_jobs_that_change_into_their_own_folder_share_the_store_of_the_folder_they_started_in(
    tmp_path, cache_dir, tiny_checkpoints
):
    args = [*GEOMETRY, "checkpoint=final", "hydra.job.chdir=true"]
    run_app(args, tmp_path, cache_dir)
    again = run_app(args, tmp_path, cache_dir)
    assert "geomsweep: skipped" in again.stdout and (tmp_path / "mlflow.db").exists()
    assert len(runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "job")) == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system of its own (tmpfs; needs root, as CI and this machine have), unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_store_out_of_disk_space_ends_in_one_line(tmp_path, cache_dir, tiny_checkpoints, small_disk):
    store = small_disk / "mlflow.db"
    shutil.copy(a_store(tmp_path), store)
    filler = open(small_disk / "filler", "wb", buffering=0)  # leave the store no room to grow
    try:
        while True:
            filler.write(b"\0" * 4096)
    except OSError:
        filler.close()
    start = time.monotonic()
    proc = run_app(GEOMETRY, tmp_path, cache_dir, f"sqlite:///{store}", check=False)
    assert proc.returncode != 0 and time.monotonic() - start < 120
    assert f"geomsweep: the MLflow store {store} ran out of disk space" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_a_full_artifact_disk_is_named_by_its_path_and_the_run_ends_failed(tmp_path, cache_dir, small_disk, store):
    """The store (sqlite, on another disk) still works: the line names the artifacts' disk, not the store, and
    the run's true status."""
    import mlflow

    mlflow.MlflowClient(store).create_experiment("geomsweep", artifact_location=str(small_disk / "artifacts"))
    filler = open(small_disk / "filler", "wb", buffering=0)  # leave the artifacts a few kilobytes
    try:
        while True:
            filler.write(b"\0" * 4096)
    except OSError:
        filler.close()
    (small_disk / "filler").write_bytes(b"\0" * ((small_disk / "filler").stat().st_size - 64 * 1024))
    proc = run_app(GEOMETRY, tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    message = f"geomsweep: the disk holding the run's artifacts ({small_disk / 'artifacts'}) is full"
    assert message in proc.stderr and "the run ended FAILED" in proc.stderr, proc.stderr[-3000:]
    (run,) = runs_of(store, "job")
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["geomsweep.error"]


def test_a_probe_longer_than_the_models_context_is_refused_at_once(tmp_path, cache_dir, tiny_checkpoints, store):
    start = time.monotonic()
    proc = run_app([*GEOMETRY, "checkpoint=final", "probe.max_length=100000"], tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0 and time.monotonic() - start < 90 and "Traceback" not in proc.stderr
    assert "probe.max_length=100000 exceeds this model's context of 64 tokens" in proc.stderr
    (run,) = runs_of(store, "job")
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_a_sweep_started_in_a_folder_with_a_quote_in_its_path_works(tmp_path, cache_dir, tiny_checkpoints):
    folder = tmp_path / "o'brien's runs"
    folder.mkdir()
    run_app(["-m", "seed=0,1", "checkpoint=final", *GEOMETRY], folder, cache_dir)
    store = f"sqlite:///{folder / 'mlflow.db'}"
    (parent,) = runs_of(store, "sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["geomsweep.cells"] == "2"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs_of(store, "job")} == {parent.info.run_id}


@pytest.mark.parametrize("artifact", ["notes.txt", ""], ids=["a-file", "the-whole-artifact-root"])
def test_a_model_uri_that_names_no_saved_model_leaves_the_cache_untouched(tmp_path, store, monkeypatch, artifact):
    import mlflow

    from geomsweep.sources.models import download_model, mlflow_model_dir

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)  # the store's artifacts go beside it, not into the working tree
    with mlflow.start_run() as run:
        mlflow.log_text("not a model", "notes.txt")
        mlflow.log_text("nor this", "plots/readme.txt")
    uri = f"runs:/{run.info.run_id}/{artifact}"
    cache = tmp_path / "cache"
    directory = mlflow_model_dir(uri, str(cache))
    with pytest.raises(FileNotFoundError, match="holds no saved model"):
        download_model(uri, directory)
    assert not directory.exists() and not directory.with_name(directory.name + ".partial").exists()


def test_a_sigterm_during_a_store_write_stops_the_job_once_the_write_has_landed(store):
    """SIGTERM raised inside a sqlite transaction would leave its lock behind, and the KILLED status written next
    would wait on it: the handler lets the write finish, then stops."""
    import mlflow

    from geomsweep.app.job import Terminated, sigterm_ends_run
    from geomsweep.tracking.writer import RunLogger, one_write

    client = mlflow.MlflowClient(store)
    log = RunLogger.create(client.create_experiment("writes"), "job", {}, client)
    with sigterm_ends_run(), pytest.raises(Terminated):
        with one_write():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler runs here, inside the write, and defers
            log.tags({"after_the_signal": "landed"})
    log.end("KILLED", "terminated")
    run = client.get_run(log.run_id)
    assert run.data.tags["after_the_signal"] == "landed" and run.info.status == "KILLED"


# Values the schema used to accept although they mean nothing or were ignored: each now stops in one line naming
# the key, the value and what is valid (checked in-process: the CLI prints the same ConfigError).
MEANINGLESS = [
    (["probe.layers=[true]"], "probe.layers=[True]; valid: a non-empty list of hidden_states indices"),
    (["sampler.temperature=inf"], "sampler.temperature=inf must be a finite number > 0"),
    (["method=sft", "++method.args.max_steps=-5"], "method.args.max_steps=-5 trains nothing; valid: a positive"),
    (["sampler.splits=[]"], "sampler.splits=[] samples nothing; valid: one or more of id, ood"),
    (["data.document_field=nope"], "data.document_field='nope' names a column, but data.source=toy has none"),
    (["task.source=files", "task.schema=gsm8k", "task.limit=0"], "task.limit=0; valid: null (all rows) or >= 1"),
    (["task.source=files", "task.schema=gsm8k", "task.limit=-1"], "task.limit=-1; valid: null (all rows) or >= 1"),
    (["eval.toy_n_docs=1"], "eval.toy_n_docs=1; valid: 0 (off) or at least 2 held-out documents"),
    (["checkpoint=step"], "checkpoint=step needs checkpoint.step=N"),
    (["task.source=files", "task.schema=gsm8k"], "task.source=files needs task.path"),
    (
        ["method=sft", "method.trainer_config=trl.NoSuchConfig"],
        "'trl' has no 'NoSuchConfig'; valid: e.g. trl.SFTConfig",
    ),
    (["method=sft", "method.trainer_config=nosuch.Config"], "cannot import 'nosuch' (No module named 'nosuch')"),
    (["tracking.uri=foo://bar"], "tracking.uri='foo://bar'; valid: a URI whose scheme is one of sqlite,"),
]


@pytest.mark.parametrize("overrides, message", MEANINGLESS, ids=[" ".join(o) for o, _ in MEANINGLESS])
def test_a_value_that_means_nothing_is_refused_in_one_line(overrides, message):
    from geomsweep.config.checks import check
    from geomsweep.config.errors import ConfigError
    from tests.test_schema import composed

    with pytest.raises(ConfigError) as refused:
        check(composed(*overrides))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_step_named_many_times_is_measured_once():
    from geomsweep.config.checks import check
    from tests.test_schema import composed

    steps = check(composed("checkpoint=steps", f"checkpoint.steps=[{','.join(['40'] * 1500)},3]")).checkpoint.steps
    assert steps == [40, 3]


def test_another_programs_sqlite_database_is_refused_untouched(tmp_path, monkeypatch):
    import sqlite3
    from types import SimpleNamespace

    from geomsweep.tracking.store import StoreError, setup_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"a SQLite database of another program \(1 tables: invoices\)"):
        setup_store(SimpleNamespace(uri=f"sqlite:///{path}", experiment="geomsweep"))
    assert path.read_bytes() == before


def test_a_deleted_experiment_is_named_with_the_fix(store, monkeypatch):
    from types import SimpleNamespace

    import mlflow

    from geomsweep.tracking.store import StoreError, setup_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = mlflow.MlflowClient(store)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(StoreError, match=r"tracking.experiment='gone' \(id \d+\) is deleted .*experiments restore"):
        setup_store(SimpleNamespace(uri=store, experiment="gone"))


def test_a_held_store_lock_says_it_waits_at_once(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from filelock import FileLock

    from geomsweep.tracking import store as stores

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(stores, "STORE_LOCK_TIMEOUT_S", 1)
    path = tmp_path / "mlflow.db"
    with FileLock(f"{path}.lock"):  # another process creating the store (a thread of its own here)
        with pytest.raises(stores.StoreError, match="stayed locked for 1 s"):
            stores.setup_store(SimpleNamespace(uri=f"sqlite:///{path}", experiment="geomsweep"))
    assert f"geomsweep: waiting up to 1 s for {path}.lock" in capsys.readouterr().err


@pytest.mark.slow
def test_a_finished_cell_whose_artifacts_are_gone_runs_again(tmp_path, cache_dir, tiny_checkpoints, store):
    args = [*GEOMETRY, "checkpoint=final"]
    run_app(args, tmp_path, cache_dir, store)
    (done,) = runs_of(store, "job")
    shutil.rmtree(done.info.artifact_uri.removeprefix("file://"))
    proc = run_app(args, tmp_path, cache_dir, store)
    assert f"run {done.info.run_id} of this cell FINISHED, but its artifacts are gone" in proc.stdout
    assert [r.info.status for r in runs_of(store, "job")] == ["FINISHED", "FINISHED"]
    assert "already FINISHED" in run_app(args, tmp_path, cache_dir, store).stdout  # the new run is reused


def test_a_plan_with_a_read_only_cache_still_answers_naming_it(tmp_path, cache_dir):
    (tmp_path / "afile").write_text("a regular file: nothing can be written below it, even by root")
    blocked = tmp_path / "afile" / "cache"
    proc = run_app(["plan=true", "tflops=null"], tmp_path, blocked, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"the measured throughput is not kept: cannot write {blocked}/throughput.json (Not a directory)" in (
        proc.stdout
    )
    assert "total: 1 cells" in proc.stdout


@pytest.mark.parametrize(
    "schema, rows, method, message",
    [
        (
            "hh",
            [{"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: No."}] * 3
            + [{"chosen": "Human: a monologue with no reply", "rejected": "Human: another one"}] * 2,
            "sft",
            "method=sft: 2 of 5 rows of task 'hh' have an empty prompt or completion (rows",
        ),
        (
            "gsm8k",
            [{"question": "How many?", "answer": "3 + 4 = 7\n#### 7"}] * 3
            + [{"question": "Why?", "answer": "Because it is so."}] * 2,
            "rlvr",
            "method=rlvr: 2 of 5 rows of task 'gsm8k' have an empty prompt or answer",
        ),
    ],
    ids=["hh-without-an-assistant-turn", "rlvr-answers-without-a-number"],
)
def test_task_rows_that_cannot_train_are_counted_before_training(tmp_path, schema, rows, method, message):
    from geomsweep.sources.tasks import Task, load_split

    path = tmp_path / f"{schema}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = load_split({"source": "files", "path": str(path), "schema": schema})
    with pytest.raises(ValueError) as refused:
        Task(schema, data, data, None).for_method(method)
    assert message in str(refused.value)
    clean = load_split({"source": "files", "path": str(path), "schema": schema, "limit": 3})
    assert len(Task(schema, clean, clean, None).for_method(method)) == 3


def test_a_native_model_type_beside_an_auto_map_is_refused_too(tmp_path, tiny_checkpoints):
    """transformers would load its own GPT-NeoX class and ignore the folder's code: the folder means its code, so
    it is refused as the README says, not measured as a model its author did not ship."""
    from geomsweep.sources.checkpoints import Checkpoint, RemoteCodeRefused

    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = hostile_model(tmp_path, tiny_checkpoints, marker)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "gpt_neox"}))
    with pytest.raises(RemoteCodeRefused, match="ships Python code of its own .*model.trust_remote_code=true"):
        Checkpoint("final", 0, None, str(folder)).load()
    assert not marker.exists()


def test_a_model_without_layers_is_named_not_an_index_error(tiny_checkpoints):
    from transformers import AutoConfig, AutoModelForCausalLM

    from geomsweep.core.extract import check_layers, resolve_layers

    config = AutoConfig.from_pretrained(tiny_checkpoints / "step40")
    config.num_hidden_layers = 0
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match="the model has num_hidden_layers=0: no layer whose representations"):
        check_layers(model, resolve_layers(model, "all"))
