"""Geometry during post-training: a TrainerCallback that measures the probe set at step 0, every N steps and at
the end, and ID/OOD behavior at the start and the end, logging into the job's MLflow run at step=global_step."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from unittest.mock import patch

from transformers import TrainerCallback
from transformers.integrations import MLflowCallback

from geomsweep.core.extract import eval_mode
from geomsweep.keys import metrics as M


class GeometryCallback(TrainerCallback):
    """``measure_geometry(model) -> metrics`` every ``every`` optimizer steps; ``measure_behavior(model, step) ->
    metrics`` at both ends.

    Each measurement is logged as soon as it is taken (a crash keeps what was measured) and kept in
    ``history`` (step -> metrics) for the job's artifacts."""

    def __init__(
        self,
        measure_geometry: Callable,
        measure_behavior: Callable,
        log,
        every: int,
        offset: int = 0,
        measure_between: Callable | None = None,
    ):
        """``offset``: where this training starts on the job's step axis (a pipeline's later stages), so a stage
        goes on from where the last one ended and its start, measured as the last one's end, is not measured again.
        ``measure_between(model, step) -> metrics``: what else is measured at the geometry steps between the ends."""
        if every < 1:
            raise ValueError(f"method.geometry_every must be >= 1, got {every}")
        self.measure_geometry, self.measure_behavior, self.log, self.every = (
            measure_geometry,
            measure_behavior,
            log,
            every,
        )
        self.offset, self.measure_between = offset, measure_between
        self.history: dict[int, dict[str, float]] = {}

    def _record(self, step: int, model, with_behavior: bool) -> None:
        step += self.offset
        with eval_mode(model):
            metrics = self.measure_geometry(model)
            if not math.isfinite(metrics.get(M.RANKME, 0.0)):
                self.log.metrics(metrics, step=step)
                raise FloatingPointError(
                    f"non-finite representations at post-training step {step}: training diverged (NaN or inf "
                    f"in the model's activations); lower method.args.learning_rate"
                )
            if with_behavior:
                metrics |= self.measure_behavior(model, step)
            elif self.measure_between is not None:
                metrics |= self.measure_between(model, step)
        self.history.setdefault(step, {}).update(metrics)
        self.log.metrics(metrics, step=step)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.offset:
            self._record(state.global_step, model, with_behavior=True)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self._record(state.global_step, model, with_behavior=False)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._record(state.global_step, model, with_behavior=True)


class MethodMLflowCallback(MLflowCallback):
    """transformers' own MLflow reporting with the trainer's metrics under the method's name (``sft/loss``,
    ``dpo/rewards/margins``, ``rlvr/reward``): SFT's, DPO's and GRPO's losses are different quantities, and
    unprefixed they would share one chart in MLflow's UI. Its ~200 arguments (and the model's config) are not
    logged as params, where they would crowd out the config's own on the Compare page: the job logs them as an
    artifact (post_training/run.py)."""

    def __init__(self, method: str):
        super().__init__()
        self.method = method

    def setup(self, args, state, model):
        with patch.dict(os.environ, {"MLFLOW_MAX_LOG_PARAMS": "0"}):  # the callback's own switch: log no params
            super().setup(args, state, model)

    def on_log(self, args, state, control, logs, model=None, **kwargs):
        named = {f"{self.method}/{key}": value for key, value in logs.items()}
        super().on_log(args, state, control, named, model=model, **kwargs)
