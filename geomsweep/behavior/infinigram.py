"""∞-gram probabilities from infini-gram: its engine over a local index, or its public API, behind one call.

``infgram_prob(ids)``: the probability of ``ids[-1]`` after the longest suffix of ``ids[:-1]`` the corpus holds,
and that suffix's length (Liu et al. 2024). The same request shape serves both engines: the API takes ``query_ids``
and answers ``prob`` and ``suffix_len``, as the package's engine does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import requests
from infini_gram.engine import InfiniGramEngine

from geomsweep.sources.corpus_index import IndexInfo

API_TIMEOUT_S = 30
RETRY_WAIT_S = 2  # between tries of one API query, as the authors' script waits


class EngineFailure(RuntimeError):
    """The engine gave no answer; the message names the index or URL."""


@dataclass(frozen=True)
class InfgramProb:
    prob: float  # negative where the engine has no estimate (the continuation never occurs in the corpus)
    suffix_len: int


class Engine(Protocol):
    name: str  # the index (a folder or the API's index name), for messages and the run's params

    def infgram_prob(self, ids: list[int]) -> InfgramProb: ...


class LocalEngine:
    """infini-gram's engine over an index folder this machine holds (``geomsweep-index`` builds one)."""

    def __init__(self, index_dir: str):
        info = IndexInfo.read(index_dir)
        self.name, self.info = index_dir, info
        self.engine = InfiniGramEngine(
            index_dir=index_dir,
            eos_token_id=info.eos_token_id,
            vocab_size=info.vocab_size,
            token_dtype=info.token_dtype,
        )

    def infgram_prob(self, ids: list[int]) -> InfgramProb:
        answer = self.engine.infgram_prob(prompt_ids=ids[:-1], cont_id=ids[-1])
        if "error" in answer:
            raise EngineFailure(f"infini-gram index {self.name}: {answer['error']}")
        return InfgramProb(answer["prob"], answer["suffix_len"])


class ApiEngine:
    """The public infini-gram API: one POST per query, tried ``retries`` times (the service answers a timeout with a
    ``message``), then a one-line failure naming the URL."""

    def __init__(self, url: str, index: str, retries: int, session: requests.Session | None = None):
        self.url, self.name, self.retries = url, index, retries
        self.session = session or requests.Session()

    def infgram_prob(self, ids: list[int]) -> InfgramProb:
        payload = {"index": self.name, "query_type": "infgram_prob", "query_ids": ids}
        reason = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(RETRY_WAIT_S)
            try:
                response = self.session.post(self.url, json=payload, timeout=API_TIMEOUT_S)
                answer = response.json()
            except (requests.RequestException, ValueError) as err:
                reason = type(err).__name__
                continue
            if "error" in answer:  # a bad request: retrying cannot help
                raise EngineFailure(f"infini-gram API {self.url} ({self.name}): {answer['error']}")
            if "prob" in answer:
                return InfgramProb(answer["prob"], answer.get("suffix_len", -1))
            reason = str(answer.get("message", answer))[:200]
        raise EngineFailure(f"infini-gram API {self.url} gave no answer in {self.retries} tries ({reason})")

    def check(self) -> None:
        """One query, before a run opens: an unreachable API fails here, not at the first checkpoint."""
        self.infgram_prob([0, 0])


def unreachable(err: EngineFailure) -> str:
    return (
        f"eval.memorization.engine=api: {err}; set eval.memorization.items=null, or build a local index "
        f"(geomsweep-index) and set eval.memorization.engine=local eval.memorization.index=DIR"
    )
