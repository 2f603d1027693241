"""The Hugging Face cache during a hub trace: room checked before each download, and each revision deleted once
measured (``cache.evict``), unless it was in the cache before the job started: what the user put there stays.

Deletion goes through ``huggingface_hub``'s cache API (``scan_cache_dir`` / ``delete_revisions``), which keeps
blobs that other revisions share (a tokenizer unchanged across checkpoints) and updates the refs.
"""

from __future__ import annotations

import functools
import logging
import shutil
import socket
import urllib.parse
from pathlib import Path

from huggingface_hub import constants, scan_cache_dir, try_to_load_from_cache

from geomsweep.sources.models import model_source

logger = logging.getLogger(__name__)
GIB = 1024**3


def cached_revisions(hub_id: str, cache_dir: str) -> list:
    """The cached revisions (huggingface_hub's CachedRevisionInfo) of the model ``hub_id``."""
    if not Path(cache_dir).is_dir():
        return []
    return [
        revision
        for repo in scan_cache_dir(cache_dir).repos
        if repo.repo_id == hub_id and repo.repo_type == "model"
        for revision in repo.revisions
    ]


def evicts(settings) -> bool:
    """``cache.evict``: true, false, or auto (on for hub traces, whose revisions are downloaded)."""
    hub_trace = model_source(settings.model).downloads and not settings.model.stages
    return settings.cache.evict is True or (settings.cache.evict == "auto" and hub_trace)


class RevisionCache:
    """One hub trace's use of the cache; made when the job starts, before anything downloads."""

    def __init__(
        self, hub_id: str, evict: bool, checkpoint_bytes: int | None, reserve_gib: float, cache_dir: str | None = None
    ):
        self.hub_id, self.evict, self.checkpoint_bytes, self.reserve = hub_id, evict, checkpoint_bytes, reserve_gib
        self.cache_dir = cache_dir or constants.HF_HUB_CACHE
        self.kept = {r.commit_hash for r in cached_revisions(hub_id, self.cache_dir)}  # the user's: never deleted
        self.evicted: list[str] = []

    def check_room(self, revision: str) -> None:
        """Before a download: stop, naming the sizes and what to do, when the revision would not leave
        ``cache.reserve_gib`` free (a revision already cached needs no room)."""
        cached = try_to_load_from_cache(self.hub_id, "config.json", cache_dir=self.cache_dir, revision=revision)
        if isinstance(cached, str):
            return
        root = Path(self.cache_dir)
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        needed = self.checkpoint_bytes or 0
        if free - needed < self.reserve * GIB:
            evicting = "on" if self.evict else "off (cache.evict=true deletes each revision once measured)"
            raise RuntimeError(
                f"no room to download {self.hub_id}@{revision}: about {needed / GIB:.1f} GiB into {root}, which has "
                f"{free / GIB:.1f} GiB free, and cache.reserve_gib={self.reserve:g} must stay free. Eviction is "
                f"{evicting}; or point HF_HOME (or HF_HUB_CACHE) at a disk with room"
            )

    def measured(self, revision: str) -> None:
        """The revision is measured: delete its files if eviction is on and this job downloaded them."""
        if not self.evict:
            return
        ours = [r.commit_hash for r in cached_revisions(self.hub_id, self.cache_dir) if revision in r.refs]
        ours = [commit for commit in ours if commit not in self.kept]
        if ours:
            strategy = scan_cache_dir(self.cache_dir).delete_revisions(*ours)
            logger.info("evicting %s@%s: %s freed", self.hub_id, revision, strategy.expected_freed_size_str)
            strategy.execute()
            self.evicted.append(revision)


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's endpoint (``HF_ENDPOINT``) takes a connection, asked once per process; never with
    ``HF_HUB_OFFLINE`` set."""
    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def unavailable_offline(model_cfg, cache_dir: str) -> str | None:
    """Why a hub model cannot be had here (no copy of its config in the Hugging Face cache, and the hub out of
    reach), or None when it can (or does not come from the hub)."""
    if not model_source(model_cfg).downloads or model_cfg.stages:
        return None
    if isinstance(try_to_load_from_cache(model_cfg.hub_id, "config.json"), str) or hub_reachable():
        return None
    return (
        f"model={model_cfg.name} ({model_cfg.hub_id}) is not available offline: it is not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and {constants.ENDPOINT} cannot be reached; download it where the hub is "
        f"reachable, then point HF_HUB_CACHE at that cache or use model=local model.path=<its folder>"
    )
