"""Comparing the cells of a sweep: each cell's geometry at its first and last step with jackknife errors, its
change between them, and pass@k with bootstrap intervals; cells that differ only in ``seed`` folded into mean and
sd over seeds, each change marked as outside noise or within it.

The noise rule (``seed_change``) uses all the variance there is. Each cell's change c_i carries its own jackknife
SE s_i over the probe texts: the paired one post-training logs (``geometry/rankme_change_se``,
spectra.change_metrics), or for a trace the first and last SEs in quadrature, an upper bound. Over n seeds the
mean change's squared uncertainty is
  - sd^2 / n + mean(s_i^2) when the seeds measured the same probe texts (one probe digest): their probe noise is
    common to every seed and does not average away, while the between-seed sd carries the training noise;
  - max(sd^2, mean(s_i^2)) / n when each seed drew its own probe texts (the toy's): the noise is independent, and
    the floor keeps a one-degree-of-freedom sd that happens to be small from claiming precision it lacks;
  - s_1^2 with one seed.
A change is ``up`` or ``down`` when its mean lies outside ±q x uncertainty, q the two-sided 95% quantile of
Student's t on n - 1 degrees of freedom (the normal's with one seed), else ``within noise``. Fewer than three
seeds cannot estimate the training noise: their verdicts say ``indicative``.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from geomsweep.behavior.sample_eval import INTERVALS
from geomsweep.core.definitions import METRICS
from geomsweep.keys import metrics as M
from geomsweep.keys.tags import TAG_PROBE_DIGEST, TAG_VERDICT_PREFIX

SEED = "seed"
PROBE = "probe_digest"  # the cell's probe texts: seeds that share them share their probe noise
LEVEL = 0.95  # the verdicts' two-sided confidence level
FEW_SEEDS = 3  # below this many seeds a verdict is only indicative
GEOMETRY = {"rankme": M.RANKME, "alpha_req": M.ALPHA_REQ}
# the suite's other measures (probe.metrics), compared the same way where a sweep measured them
SUITE = {name: M.geometry(name) for name in METRICS if name not in GEOMETRY}
SUITE["weights_alpha"] = M.WEIGHTS_ALPHA  # probe.weights: the mean power-law alpha of the block matrices
PASS_AT = M.PASS_AT_VARIANTS


def cell_row(client, run, swept: list[str]) -> dict:
    """One cell's values: its swept keys, geometry first/last/change with SEs, and its latest pass@k figures."""
    row = {key: swept_value(run, key) for key in swept} | {PROBE: run.data.tags.get(TAG_PROBE_DIGEST)}
    measured = GEOMETRY | {name: key for name, key in SUITE.items() if key in run.data.metrics}
    for name, key in measured.items():
        values = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        errors = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{key}_se")}
        if not values:
            continue
        (first_step, first), (last_step, last) = values[0], values[-1]
        row[f"{name}_first"], row[f"{name}_last"], row[f"{name}_change"] = first, last, last - first
        row[f"{name}_points"] = len(values)
        se_first, se_last = errors.get(first_step, math.nan), errors.get(last_step, math.nan)
        # post-training logs the paired SE of its change; otherwise the two SEs in quadrature (an upper bound)
        paired = client.get_metric_history(run.info.run_id, M.se(M.change(M.geometry(name))))
        change_se = max(paired, key=lambda m: m.step).value if paired else math.hypot(se_first, se_last)
        row[f"{name}_last_se"], row[f"{name}_change_se"] = se_last, change_se
    for key, value in run.data.metrics.items():
        if match := PASS_AT.fullmatch(key):  # runs written before the intervals table also carry _lo / _hi here
            row[f"pass_at_{match.group(1)}{match.group(2) or ''}"] = value
        elif name := M.paired_over_items(key):  # the harness's tasks, memorization: paired over items by the job
            row[name], row[f"{name}_se"] = value, run.data.metrics.get(M.se(key), math.nan)
    return row | pass_at_k_intervals(client, run)


def downstream_names(columns) -> list[str]:
    """The measures paired over items whose change a table holds: the harness's (``toy_recall/acc`` for
    ``toy_recall/acc_change``) and memorization."""
    memorization = M.paired_over_items(M.change(M.MEMORIZATION))
    return sorted(
        c.removesuffix("_change") for c in columns if c.endswith("_change") and ("/" in c or c == memorization)
    )


def pass_at_k_intervals(client, run) -> dict[str, float]:
    """The ID split's pass@k intervals at the run's last sampled step, and its pass@k changes' (``pass_at_4_lo``,
    ``pass_at_4_change_hi``, ...), from the run's intervals table; {} for a run that sampled nothing."""
    if not any(key.startswith(M.BEHAVIOR + "pass_at_") for key in run.data.metrics):
        return {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            table = pd.read_csv(client.download_artifacts(run.info.run_id, INTERVALS, folder))
    except Exception:  # an older run (its intervals are metrics) or one that ended before writing it
        return {}
    table = table[table["split"] == "id"]
    last = table[table["step"] == table.loc[table["measure"] == "pass_at_k", "step"].max()]
    found = {}
    for _, row in last.iterrows():
        name = f"pass_at_{row['k']}" + ("_change" if row["measure"] == "pass_at_k_change" else "")
        found[f"{name}_lo"], found[f"{name}_hi"] = float(row["lo"]), float(row["hi"])
    return found


def swept_value(run, key: str) -> str | None:
    """The cell's value of a swept key: its config param (``cfg.probe.norm``), a config group's choice
    (``method`` -> ``cfg.method.name``), else as its run name (``method=dpo,seed=1``) gives it."""
    params = run.data.params
    for param in (f"cfg.{key}", f"cfg.{key}.name"):
        if param in params:
            return params[param]
    # Hydra joins a cell's overrides with "," (override_dirname): a comma inside a list value starts no override
    parts = re.split(r",(?=[\w.+~@/-]+=)", run.info.run_name or "")
    named = dict(part.split("=", 1) for part in parts if "=" in part)
    return named.get(key)


def verdict(mean: float, halfwidth: float) -> str:
    """``up`` or ``down`` when ``mean`` lies outside ±``halfwidth``, else ``within noise``."""
    if not math.isfinite(mean) or not math.isfinite(halfwidth):
        return "unknown"
    if abs(mean) <= halfwidth:
        return "within noise"
    return "up" if mean > 0 else "down"


@dataclass(frozen=True)
class SeedChange:
    """A change over seeds: its mean, uncertainty (a standard error), the 95% interval's half-width and verdict."""

    mean: float
    uncertainty: float
    halfwidth: float
    verdict: str


def seed_change(changes, ses, shared_probe: bool) -> SeedChange:
    """The module's noise rule for one change measured under n seeds (``changes``), each with its own SE."""
    changes, ses = np.asarray(changes, dtype=float), np.asarray(ses, dtype=float)
    n, mean = len(changes), float(np.mean(changes))
    within = float(np.mean(ses**2)) if np.isfinite(ses).all() else math.nan
    if n == 1:
        variance, quantile = within, stats.norm.ppf(0.5 + LEVEL / 2)
    else:
        between = float(np.var(changes, ddof=1))
        if math.isnan(within):  # no run SE (an older run): the spread over seeds alone
            variance = between / n
        else:
            variance = between / n + within if shared_probe else max(between, within) / n
        quantile = stats.t.ppf(0.5 + LEVEL / 2, n - 1)
    uncertainty = math.sqrt(variance)
    halfwidth = float(quantile * uncertainty)
    said = verdict(mean, halfwidth)
    if n < FEW_SEEDS and said != "unknown":
        said = f"{said} (indicative: {n} seed{'s' if n > 1 else ''})"
    return SeedChange(mean, uncertainty, halfwidth, said)


def over_seeds(cells: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """One row per group of cells that differ only in ``seed``: every numeric column's mean and sd over the
    seeds, and for each geometric change its uncertainty and verdict (the module's noise rule)."""
    keys = [key for key in swept if key != SEED and key in cells]
    numeric = [c for c in cells.columns if c not in swept and pd.api.types.is_numeric_dtype(cells[c]) and c != PROBE]
    spread = [c for c in numeric if not c.endswith(("_se", "_lo", "_hi"))]  # an interval's ends and SEs: means only
    grouped = cells.groupby(keys or (lambda _: 0), sort=False, dropna=False)
    folded = pd.concat(
        [
            grouped.size().rename("seeds"),
            grouped[numeric].mean(),
            grouped[spread].std(ddof=1).add_suffix("_sd"),
            grouped.apply(change_verdicts, include_groups=False),
        ],
        axis=1,
    )
    order = [c for column in numeric for c in (column, f"{column}_sd") if c in folded]
    return folded[["seeds", *order, *[c for c in folded if c not in order and c != "seeds"]]].reset_index(drop=not keys)


def change_verdicts(group: pd.DataFrame) -> pd.Series:
    """For each geometric change of one group's seeds: its uncertainty, 95% half-width and verdict."""
    row = {}
    downstream = downstream_names(group.columns)
    for name in [*GEOMETRY, *SUITE, *downstream]:
        change = f"{name}_change"
        if change not in group:
            continue
        ses = group[f"{change}_se"] if f"{change}_se" in group else [math.nan] * len(group)
        # seeds that share their probe texts share its noise; the harness's tasks are the same items for every seed
        shared = name in downstream or (PROBE in group and group[PROBE].notna().all() and group[PROBE].nunique() == 1)
        judged = seed_change(group[change], ses, shared)
        row[f"{change}_uncertainty"], row[f"{change}_ci95"] = judged.uncertainty, judged.halfwidth
        one_point = f"{name}_points" in group and (group[f"{name}_points"] < 2).any()
        row[f"{change}_verdict"] = "one checkpoint" if one_point else judged.verdict
    return pd.Series(row, dtype=object)


def rounded(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Numbers to ``digits`` significant figures, for reading."""

    def round_column(column: pd.Series) -> pd.Series:
        if not pd.api.types.is_float_dtype(column):
            return column
        return column.map(lambda v: float(f"{v:.{digits}g}") if math.isfinite(v) else v)

    return frame.apply(round_column)


def describe(row: dict, phases: str | None = None) -> list[str]:
    """A few lines of a cell's results (``cell_row``) for the end-of-job message."""
    lines = [f"phases: {phases}"] if phases else []
    for name, label in (("rankme", "RankMe"), ("alpha_req", "α-ReQ")):
        if f"{name}_first" not in row:
            continue
        first, last = row[f"{name}_first"], row[f"{name}_last"]
        change, se = row[f"{name}_change"], row[f"{name}_change_se"]
        if row.get(f"{name}_points", 2) < 2:  # one checkpoint: nothing changed, and no change is claimed
            lines.append(f"{label} {last:.4g} ± {row[f'{name}_last_se']:.2g} (SE), at one checkpoint")
            continue
        lines.append(
            f"{label} {first:.4g} -> {last:.4g} ± {row[f'{name}_last_se']:.2g} (SE): change {change:+.3g} ± {se:.2g}, "
            f"{seed_change([change], [se], shared_probe=True).verdict}"
        )
    ks = sorted({int(m.group(1)) for key in row if (m := re.fullmatch(r"pass_at_(\d+)", key))})
    for k in ks[:1] + ks[-1:] if len(ks) > 1 else ks:
        line = f"pass@{k} {row[f'pass_at_{k}']:.3f} [{row.get(f'pass_at_{k}_lo', math.nan):.3f}, "
        line += f"{row.get(f'pass_at_{k}_hi', math.nan):.3f}]"
        if f"pass_at_{k}_change" in row:
            line += (
                f", change {row[f'pass_at_{k}_change']:+.3f} [{row[f'pass_at_{k}_change_lo']:+.3f}, "
                f"{row[f'pass_at_{k}_change_hi']:+.3f}]"
            )
        lines.append(line)
    return lines


def headline(folded: pd.DataFrame, swept: list[str]) -> list[str]:
    """One line per group of a sweep's comparison: its geometric changes with their uncertainty and verdict."""
    keys = [key for key in swept if key != SEED and key in folded]
    lines = []
    for _, row in folded.iterrows():
        cell = " ".join(f"{key}={row[key]}" for key in keys) or "all cells"
        parts = [
            f"{label} change {plus_minus(row[f'{name}_change'], row[f'{name}_change_ci95'])} (95%, "
            f"{row[f'{name}_change_verdict']})"
            for name, label in (("rankme", "RankMe"), ("alpha_req", "α-ReQ"))
            if f"{name}_change_verdict" in row
        ]
        lines.append(f"{cell} ({row['seeds']} seed{'s' if row['seeds'] > 1 else ''}): " + "; ".join(parts))
    return lines


def plus_minus(value: float, error: float) -> str:
    """``-0.215 ± 0.16``: the value rounded to the error's precision (the error to two significant figures)."""
    if not (math.isfinite(value) and math.isfinite(error) and error > 0):
        return f"{value:+.3g} ± {error:.2g}"
    decimals = max(0, 1 - math.floor(math.log10(error)))
    return f"{value:+.{decimals}f} ± {float(f'{error:.2g}'):.{decimals}f}"


def group_label(row, keys: list[str]) -> str:
    """A group of the comparison named by its swept values (``sft``, ``sft 0.001``), as an MLflow key allows."""
    label = " ".join(str(row[key]) for key in keys) or "all"
    return re.sub(r"[^\w.\- :/]", "_", label).replace("/", "_")


def group_metrics(folded: pd.DataFrame, swept: list[str]) -> dict[str, float]:
    """Each group's changes as metrics of the sweep parent (``sft/rankme_change``, its uncertainty
    ``sft/rankme_change_uncertainty`` and its 95% interval's half-width ``sft/rankme_change_ci95``,
    ``sft/pass_at_1_change``, ...), so its row in the runs table answers."""
    keys = [key for key in swept if key != SEED and key in folded]
    values = {}
    for _, row in folded.iterrows():
        label = group_label(row, keys)
        for column in row.index:
            wanted = (
                column.endswith(("_change", "_change_uncertainty", "_change_ci95"))
                or PASS_AT.fullmatch(M.BEHAVIOR + column) is not None
                and column.endswith("_change")
            )
            if wanted and isinstance(row[column], int | float) and math.isfinite(row[column]):
                values[f"{label}/{column}"] = float(row[column])
    return values


def group_verdicts(folded: pd.DataFrame, swept: list[str]) -> dict[str, str]:
    """Each group's answer in one tag of the sweep parent (``geomsweep.verdict.sft``: ``2 seeds, indicative: RankMe
    -1.9 ± 3.5 within noise; α-ReQ +0.09 ± 0.62 within noise``), a column the saved view shows first: with few
    seeds the caveat leads, so a table cell cut short still shows it."""
    keys = [key for key in swept if key != SEED and key in folded]
    tags = {}
    for _, row in folded.iterrows():
        labelled = [("rankme", "RankMe"), ("alpha_req", "α-ReQ"), *((n, n) for n in downstream_names(row.index))]
        parts = [
            f"{label} {plus_minus(row[f'{name}_change'], row[f'{name}_change_ci95'])} "
            + str(row[f"{name}_change_verdict"]).split(" (indicative")[0]
            for name, label in labelled
            if f"{name}_change_verdict" in row and isinstance(row[f"{name}_change_verdict"], str)
        ]
        seeds = int(row["seeds"])
        caveat = f"{seeds} seed{'s' if seeds > 1 else ''}, indicative: " if seeds < FEW_SEEDS else ""
        if parts:
            tags[f"{TAG_VERDICT_PREFIX}{group_label(row, keys)}"] = caveat + "; ".join(parts)
    return tags


def comparison_markdown(folded: pd.DataFrame, swept: list[str]) -> str:
    """The comparison as a markdown table (the parent's Overview, ``mlflow.note.content``): per group, each change
    with its uncertainty and verdict."""
    keys = [key for key in swept if key != SEED and key in folded]
    ks = sorted({int(m.group(1)) for c in folded.columns if (m := re.fullmatch(r"pass_at_(\d+)_change", c))})
    passes = ks[:1] + ks[-1:] if len(ks) > 1 else ks
    suite = [name for name in SUITE if f"{name}_change_verdict" in folded]
    downstream = downstream_names(folded.columns)
    names = [*GEOMETRY, *suite, *downstream]
    header = ["group", "seeds", "RankMe change", "α-ReQ change", *(f"{n} change" for n in [*suite, *downstream])]
    header = [*header[:2], *(f"{h} (± 95%)" for h in header[2:])]
    header += [f"pass@{k} change" for k in passes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in folded.iterrows():
        cells = [" ".join(f"{key}={row[key]}" for key in keys) or "all cells", str(row["seeds"])]
        for name in names:
            if isinstance(row.get(f"{name}_change_verdict"), str):
                interval = plus_minus(row[f"{name}_change"], row[f"{name}_change_ci95"])
                cells.append(f"{interval}: {row[f'{name}_change_verdict']}")
            else:
                cells.append("-")
        for k in passes:
            change, lo, hi = (row.get(f"pass_at_{k}_change{s}", math.nan) for s in ("", "_lo", "_hi"))
            cells.append(f"{change:+.3f} [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(change) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(
        [
            "**Comparison**: each group's mean change from its cells' first to last step, ± its 95% interval "
            "(Student's t on seeds - 1 degrees of freedom over the spread between seeds and each run's own SE: "
            "jackknife for the geometry, paired over the same items for the harness's tasks); up or down only "
            "outside it, and indicative below 3 seeds. pass@k: bootstrap 95% intervals.",
            "",
            *lines,
        ]
    )
