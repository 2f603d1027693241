"""A cell's identity: a hash of its resolved config without logistics, and of the local files it reads.

Two runs are the same cell exactly when their identities match; that is how a finished cell is found again and
skipped. Identities must not move when code moves: dotted paths into geomsweep's own packages are hashed as they
were first spelled (post-training lived in a top-level ``post_training`` package before it moved inside
geomsweep), so cells finished before a move keep their hash; a field added later is left out at the value that
computes what earlier cells computed (``ADDED_FIELDS``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from geomsweep.config.choices import MemorizationItems, NgramEngine
from geomsweep.config.toy import ADDED_FIELDS as TOY_ADDED_FIELDS
from geomsweep.sources.corpus_index import INFO_FILE
from geomsweep.sources.data import data_files, english_windows

# Parts of the config that say where things go, not what is computed: left out of the run identity.
LOGISTICS_KEYS = ("tracking", "cache_dir", "progress", "prefetch", "plan", "tflops", "cache")  # results never differ
# Where a dotted path in the config now starts -> how it was spelled when identities were first made.
FIRST_SPELLING = {"geomsweep.post_training.": "post_training."}
MAX_PARAM_CHARS = 6000
# Config fields added after cells were first made -> the value that computes what cells made before them computed
# (or a test of the value): left out of the identity there, so those cells are found again (and a new default makes
# new cells).
ADDED_FIELDS = {
    ("data", "document_field"): None,
    ("probe", "jackknife_groups"): "interleaved",
    ("probe", "metrics"): ["rankme", "alpha_req"],
    ("probe", "reservoir"): 2048,
    ("probe", "weights"): False,
    ("eval", "harness"): lambda harness: not harness.get("tasks"),  # lm-evaluation-harness off, whatever else
    ("eval", "memorization"): lambda memorization: not memorization.get("items"),  # off, whatever else
    **{("model", "toy", name): before for name, before in TOY_ADDED_FIELDS.items()},
}
# Config fields removed since cells were first made -> (the field they followed, the value every cell made before
# the removal that computes what a cell computes now had): put back where they were before hashing. A cell with
# eval.ngram_order=3 computed everything a cell computes without it (its n-gram alignment is retired).
RETIRED_FIELDS = {("eval", "ngram_order"): ("toy_n_docs", 3)}


def flatten(cfg: DictConfig) -> dict[str, str]:
    """Resolved config as ``cfg.<dotted.key>`` -> string value, one MLflow param each."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}")
        else:
            out[prefix] = str(node)[:MAX_PARAM_CHARS]

    walk(OmegaConf.to_container(cfg, resolve=True), "cfg")
    return out


def first_spelling(node: Any) -> Any:
    """``node`` with every dotted path into a moved package spelled as it first was."""
    if isinstance(node, dict):
        return {key: first_spelling(value) for key, value in node.items()}
    if isinstance(node, list):
        return [first_spelling(value) for value in node]
    if isinstance(node, str):
        for now, first in FIRST_SPELLING.items():
            if node.startswith(now):
                return first + node[len(now) :]
    return node


def section(container: dict, parents: list[str]) -> dict:
    """The config's section at ``parents`` ({} where there is none)."""
    node = container
    for name in parents:
        node = node.get(name) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def config_hash(cfg: DictConfig, without: tuple[str, ...] = (), data: str = "") -> str:
    """Identity of a cell: a hash of the resolved config without logistics (output dirs, tracking store) and
    without the top-level keys in ``without``, and of ``data``, the digest of the local data files it reads (so
    an edited probe or task file makes a new cell)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in (*LOGISTICS_KEYS, *without):
        container.pop(key, None)
    for (*parents, key), (after, value) in RETIRED_FIELDS.items():
        node = section(container, parents)
        if after in node and key not in node:
            items = list(node.items())
            at = list(node).index(after) + 1
            node.clear()
            node.update([*items[:at], (key, value), *items[at:]])
    for (*parents, key), before in ADDED_FIELDS.items():
        node = section(container, parents)
        if key in node and (before(node[key]) if callable(before) else node[key] == before):
            node.pop(key)
    canonical = OmegaConf.to_yaml(OmegaConf.create(first_spelling(container)))
    return hashlib.sha256((canonical + data).encode()).hexdigest()[:16]


def trace_key(cfg: DictConfig, data: str = "") -> str:
    """Identity of a trace: jobs that differ only in which checkpoints they measured belong to one trace."""
    return config_hash(cfg, without=("checkpoint",), data=data)


def memorized(settings) -> list[str]:
    """The local files eval.memorization reads: a JSONL item file, and a local index's record of its corpus."""
    cfg = settings.eval.memorization
    if cfg.items is None:
        return []
    index = [str(Path(cfg.index) / INFO_FILE)] if cfg.engine == NgramEngine.local and cfg.index else []
    return [*([] if cfg.items in MemorizationItems.__members__ else [cfg.items]), *index]


def data_files_digest(settings) -> str:
    """A digest of the content of the local files a cell reads (data.path: the files it will read; task.path and
    task.ood.path: every file of a directory; memorization's items and index), and for ``data=english`` the windows
    it cuts from this system's licence texts; hub datasets and the toy world are identified by their config alone.
    A path that cannot be read adds nothing here: the job reports it, naming it."""
    files: list[Path] = []
    if settings.data.source == "files":
        try:
            files += data_files(str(settings.data.path))[0]
        except (OSError, ValueError):
            pass
    ood = settings.task.ood or {}
    task_path = settings.task.path if settings.task.source == "files" else None
    for path in [task_path, ood.get("path"), *memorized(settings)]:
        if path and (path := Path(str(path)).expanduser()).exists():
            files += [f for f in sorted(path.rglob("*")) if f.is_file()] if path.is_dir() else [path]
    digest = hashlib.sha256()
    if settings.data.source == "english":
        digest.update("\x00".join(f"{licence}\x01{text}" for licence, text in english_windows()).encode())
    for file in files:
        if file.is_file():
            digest.update(str(file).encode() + b"\x00" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]
