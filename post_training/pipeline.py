"""``method=pipeline``: post-training stages in turn, each from the model the last one left (the paper's SFT, then
DPO, then RLVR), in one run whose trace crosses the stages.

A stage is what ``method=<stage>`` would run, with its recipe and task and this job's other overrides, composed
and checked before any training starts. The step axis goes on across stages; ``geomsweep.stage.<step>`` tags and
the ``post_training/stage`` metric mark where each starts, and pass@k and diversity are sampled on the pipeline's
own task at every boundary.
"""

from __future__ import annotations

from peft import PeftModel

from geomsweep.behavior.sample_eval import sampling_probe
from geomsweep.config.checks import stage_configs
from geomsweep.core.measure import resolve_device
from geomsweep.keys import metrics as M
from geomsweep.keys.tags import TAG_STAGE_PREFIX
from geomsweep.post_training.run import Measurer, load_base, log_history, log_pass_at_k, log_peak, train_stage
from geomsweep.sources.data import ProbeSet


def run_pipeline(settings, probe: ProbeSet, log) -> dict[int, dict[str, float]]:
    """Every stage trained and measured in turn; returns the history (step on the job's axis -> metrics)."""
    stages = stage_configs(settings)
    device = resolve_device(settings.device)
    model, tokenizer, meter = load_base(settings, device, log)
    history: dict[int, dict[str, float]] = {}
    offset = 0
    with sampling_probe(settings) as sampling:
        measure = Measurer(settings, tokenizer, probe, log, sampling)
        for index, (name, stage) in enumerate(stages):
            log.tags({f"{TAG_STAGE_PREFIX}{offset}": name})
            log.metrics({M.STAGE: index}, step=offset)
            stage_history, model = train_stage(stage, model, tokenizer, measure, log, device, offset, f"{name}.")
            if isinstance(model, PeftModel):  # the next stage trains the weights this one's adapters changed
                model = model.merge_and_unload()
            for step, metrics in stage_history.items():
                history.setdefault(step, {}).update(metrics | {M.STAGE: index})
            offset = max(stage_history)
        measure.log_spectra(offset)
    log_peak(log, meter)
    log_pass_at_k(sampling, log)
    return log_history(settings, history, log)
