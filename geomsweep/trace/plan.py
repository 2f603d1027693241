"""``plan=true`` for traces: what a trace, or every cell of a sweep, will cost before anything loads or any run
is created: checkpoints, probe tokens, forward FLOPs, bytes to fetch, time on this device and peak disk.

The figures: a checkpoint's forward pass costs 2 x parameters x tokens FLOPs (tokens: probe.n_sequences x
probe.max_length, an upper bound as shorter texts pad less, plus lm-evaluation-harness's calls at up to
probe.max_length tokens each); time is that over the device's throughput, measured
once per machine with a matrix product and cached (or ``tflops=`` as given); a hub checkpoint weighs its
parameters x the bytes of its stored dtype, and with ``cache.evict`` at most two are on disk at once (the one
measured and the one prefetched), without it all of them.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from geomsweep.behavior.harness import harness_for
from geomsweep.config.errors import ConfigError
from geomsweep.core.measure import resolve_device, resolve_dtype
from geomsweep.estimate.memory import BYTES, model_shape, plan_memory
from geomsweep.sources.hub_cache import evicts
from geomsweep.sources.models import model_source, resolve
from geomsweep.trace.pipeline import resolve_prefetch
from geomsweep.tracking.identity import config_hash, data_files_digest
from geomsweep.tracking.liveness import finished_cell

GB = 1e9


@dataclass(frozen=True)
class TracePlan:
    cell: str
    model: str
    checkpoints: int
    tokens: int  # per checkpoint
    parameters: int | None  # None: nothing on this machine tells the model's size
    checkpoint_bytes: int | None  # one checkpoint's weights as stored (hub traces: what is downloaded)
    downloads: bool  # fetched from the hub (disk and eviction apply)
    evict: bool
    prefetch: bool
    tflops: float  # the device's sustained throughput the times assume
    harness_requests: int | None = 0  # lm-eval's model calls per checkpoint (None: its tasks cannot be built here)
    max_length: int = 0  # tokens per harness call, at most (the probe's max_length)

    @property
    def flops(self) -> float:
        """Forward FLOPs of one checkpoint: its probe set, and lm-eval's calls at up to ``max_length`` tokens each."""
        return 2.0 * (self.parameters or 0) * (self.tokens + (self.harness_requests or 0) * self.max_length)

    @property
    def seconds(self) -> float:
        return self.checkpoints * self.flops / (self.tflops * 1e12)

    def disk(self, evict: bool) -> int:
        """Peak bytes of downloaded checkpoints on disk, with or without eviction."""
        if not self.downloads or self.checkpoint_bytes is None:
            return 0
        at_once = min(self.checkpoints, 2 if self.prefetch else 1) if evict else self.checkpoints
        return at_once * self.checkpoint_bytes

    def row(self) -> dict:
        known = self.parameters is not None
        return {
            "cell": self.cell,
            "model": self.model,
            "checkpoints": self.checkpoints,
            "tokens/ckpt": self.tokens,
            "harness calls/ckpt": "?" if self.harness_requests is None else self.harness_requests,
            "params": f"{self.parameters / 1e6:,.1f}M" if known else "unknown",
            "TFLOP/ckpt": f"{self.flops / 1e12:.3g}" if known else "?",
            "GB/ckpt": f"{self.checkpoint_bytes / GB:.3g}" if self.downloads and known else "-",
            "time": duration(self.seconds) if known else "?",
            "disk (evict)": f"{self.disk(True) / GB:.3g} GB" if self.downloads else "-",
            "disk (keep)": f"{self.disk(False) / GB:.3g} GB" if self.downloads else "-",
        }


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def plan_trace(settings, cell: str, tflops: float) -> TracePlan:
    """The plan of one cell (``settings``: its typed Config)."""
    model, probe = settings.model, settings.probe
    source = model_source(model)
    selected = resolve(model, settings.checkpoint, settings.cache_dir, source.offered(model, settings.cache_dir))
    shape = model_shape(model, settings.cache_dir, settings.method.lora)
    parameters = shape.parameters if shape else None
    downloads = source.downloads
    device = resolve_device(settings.device)
    return TracePlan(
        cell=cell,
        model=str(model.name),
        checkpoints=len(selected),
        tokens=probe.n_sequences * probe.max_length,
        parameters=parameters,
        checkpoint_bytes=parameters * BYTES[str(model.dtype or "float32")] if parameters else None,
        downloads=downloads,
        evict=evicts(settings),
        prefetch=resolve_prefetch(settings.prefetch, device),
        tflops=tflops,
        harness_requests=harness_requests(settings),
        max_length=probe.max_length,
    )


def harness_requests(settings) -> int | None:
    """lm-evaluation-harness's calls per checkpoint, or None when its tasks cannot be built here (a hub task
    offline: the job itself would say why)."""
    try:
        harness = harness_for(settings)
    except ConfigError:
        return None
    return harness.requests() if harness is not None else 0


def throughput(settings) -> float:
    """The device's sustained TFLOP/s: ``tflops=`` when given, else a matrix product measured once per machine
    and device and cached under ``cache_dir``."""
    if settings.tflops:
        return float(settings.tflops)
    device = resolve_device(settings.device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    key = f"{name} x{torch.get_num_threads()} threads" if device == "cpu" else name
    path = Path(settings.cache_dir).expanduser() / "throughput.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    if key not in known:
        known[key] = measure_tflops(device)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(known, indent=1))
        except OSError as err:  # a read-only cache: the plan still answers, measuring again next time
            print(f"geomsweep: the measured throughput is not kept: cannot write {path} ({err.strerror or err})")
    return known[key]


def measure_tflops(device: str, seconds: float = 1.0) -> float:
    """TFLOP/s of repeated square matrix products in the dtype a measurement uses there (float32 on a CPU,
    bfloat16 on a GPU)."""
    n, dtype = (1024, torch.float32) if device == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if device != "cpu":
            torch.cuda.synchronize(device)
    return 2.0 * n**3 * count / (time.perf_counter() - start) / 1e12


def table(plans: list[TracePlan], skipped: dict[str, str] | None = None) -> str:
    """The plans as a table with totals; ``skipped`` names the cells an earlier FINISHED run covers."""
    skipped = skipped or {}
    frame = pd.DataFrame([p.row() | {"skip": skipped.get(p.cell, "")} for p in plans])
    run = [p for p in plans if p.cell not in skipped]
    hours = sum(p.seconds for p in run) / 3600
    tflops = {f"{p.tflops:.3g}" for p in plans}
    lines = [
        frame.to_string(index=False),
        f"total: {len(plans)} cells ({len(plans) - len(run)} skipped as FINISHED), "
        f"{sum(p.checkpoints for p in run)} checkpoints, {sum(p.checkpoints * p.flops for p in run) / 1e15:.3g} PFLOP, "
        f"{hours:.3g} device-hours at {'/'.join(sorted(tflops))} TFLOP/s; peak disk of one cell "
        f"{max((p.disk(p.evict) for p in run), default=0) / GB:.3g} GB with its eviction setting",
    ]
    return "\n".join(lines)


def plan_table(cells: list[tuple[str, DictConfig, object]]) -> tuple[str, pd.DataFrame | None]:
    """What ``plan=true`` prints for the cells (name, composed config, typed config) of a run or a sweep: the
    traces' table with totals and each post-training cell's memory plan; and the traces' table as a frame."""
    traces = [(name, cfg, settings) for name, cfg, settings in cells if settings.method.name == "none"]
    lines, frame = [], None
    if traces:
        tflops = throughput(traces[0][2])
        plans = [plan_trace(settings, name, tflops) for name, _, settings in traces]
        skipped = {
            name: f"FINISHED in {run}"
            for name, cfg, settings in traces
            if (run := finished_cell(config_hash(cfg, data=data_files_digest(settings)), settings.tracking))
        }
        lines.append(table(plans, skipped))
        frame = pd.DataFrame([p.row() for p in plans])
    for name, _, settings in cells:
        if settings.method.name != "none":
            device = resolve_device(settings.device)
            memory = plan_memory(settings, device, resolve_dtype(settings.dtype, device, settings.model.dtype))
            known = memory.describe() if memory else "nothing on this machine tells this model's size"
            lines.append(f"{name}: method={settings.method.name}: {known}")
    return "\n".join(lines), frame
