"""Memorization the paper's way: infini-gram's own indexer and engine on a local corpus, exact against brute-force
counts; the API engine at its protocol level; the logged ρ against scipy on the logged per-item table; and every
fault refused in one line before a run opens."""

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from geomsweep.app.index import main as index_command
from geomsweep.behavior import infinigram
from geomsweep.behavior.infinigram import ApiEngine, EngineFailure, LocalEngine
from geomsweep.behavior.memorization import infgram_logprob, rho_replicates
from geomsweep.sources.corpus_index import IndexInfo, build_index
from geomsweep.sources.qa_items import QAItem, jsonl_items, paper_prompt
from geomsweep.sources.toy.pretrain import train_tokenizer
from tests.conftest import TINY, run_app

ALPHABET = "abcab d"  # skewed: a and b twice as frequent as the rest


def corpus(n_docs=120, seed=0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(5, 40))) for _ in range(n_docs)]


def brute_count(sequences, query) -> int:
    return sum(s[i : i + len(query)] == query for s in sequences for i in range(len(s) - len(query) + 1))


def brute_infgram(sequences, prompt, cont) -> tuple[float, int]:
    """The ∞-gram (Liu et al. 2024): back off to the longest suffix of the prompt the corpus holds, then count."""
    for length in range(len(prompt), 0, -1):
        suffix = prompt[len(prompt) - length :]
        if (n := brute_count(sequences, suffix)) > 0:
            return brute_count(sequences, [*suffix, cont]) / n, length
    positions = sum(len(s) + 1 for s in sequences)  # the empty suffix occurs everywhere, separators included
    return brute_count(sequences, [cont]) / positions, 0


def queries(sequences, rng, n=150) -> list[list[int]]:
    """Pieces of the corpus (long matches) and random strings (short or none)."""
    picked = []
    for _ in range(n):
        if rng.random() < 0.5:
            seq = rng.choice(sequences)
            start = rng.randrange(len(seq))
            picked.append(seq[start : start + rng.randint(1, 9)])
        else:
            picked.append([rng.choice(sequences[0][1:] or [1]) for _ in range(rng.randint(1, 7))])
    return picked


@pytest.mark.parametrize("tokenized", [False, True], ids=["bytes", "tokenizer"])
def test_the_engine_counts_and_infgram_probabilities_match_a_brute_force_count(tmp_path, tokenized):
    texts = corpus()
    tokenizer = train_tokenizer(texts, vocab_size=40) if tokenized else None
    info = build_index(texts, tmp_path / "index", tokenizer, "trained here" if tokenized else "bytes")
    if tokenized:  # each document after its end-of-document token, as a pretraining stream
        sequences = [[tokenizer.eos_token_id, *ids] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        assert info.token_dtype == "u16" and info.eos_token_id == tokenizer.eos_token_id
    else:
        sequences = [list(text.encode()) for text in texts]  # as infini-gram's own indexer lays out raw bytes
        assert (info.token_dtype, info.vocab_size) == ("u8", 255)
    assert IndexInfo.read(tmp_path / "index") == info and info.documents == len(texts)
    engine = LocalEngine(str(tmp_path / "index"))
    for query in queries(sequences, random.Random(1)):
        assert engine.engine.count(query)["count"] == brute_count(sequences, query), query
        prob, suffix = brute_infgram(sequences, query[:-1], query[-1])
        answer = engine.infgram_prob(query)
        assert (answer.prob, answer.suffix_len) == (pytest.approx(prob, abs=1e-12), suffix), query


def test_the_index_command_indexes_a_corpus_folder_and_refuses_an_empty_one(tmp_path, capsys):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(10)))
    (folder / "b.txt").write_text("one more document")
    index_command([str(folder), str(tmp_path / "index")])
    assert "11 documents" in capsys.readouterr().out
    assert IndexInfo.read(tmp_path / "index").documents == 11
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="geomsweep-index: corpus .*empty has no documents; valid: a .jsonl file"):
        index_command([str(tmp_path / "empty"), str(tmp_path / "nothing")])
    (folder / "c.jsonl").write_text("not json\n")
    with pytest.raises(SystemExit, match=r"c.jsonl:1 is not JSON"):
        index_command([str(folder), str(tmp_path / "broken")])
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "broken").exists()  # nothing left behind


def test_the_authors_rule_for_an_answers_infgram_log_probability():
    assert infgram_logprob([0.5, 0.0, -1.0, 0.25]) == pytest.approx(np.log(0.5 * 0.25))  # zeros left out
    assert np.isnan(infgram_logprob([0.0, -1.0]))  # no estimate at all: the item is left out
    assert paper_prompt("Who wrote Hamlet") == "Question: Who wrote Hamlet? Answer:"


def test_rho_and_its_jackknife_error_on_a_table():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    table = pd.DataFrame(
        {"model_logprob": x, "infgram_logprob": x + rng.normal(size=300), "group": np.arange(300) // 10}
    )
    table.loc[::7, "infgram_logprob"] = np.nan  # items without an estimate are left out
    rho, replicates, n = rho_replicates(table, groups=20)
    kept = table.dropna()
    assert n == len(kept) and rho == pytest.approx(spearmanr(kept["model_logprob"], kept["infgram_logprob"])[0])
    assert len(replicates) == 20 and 0 < np.std(replicates) < 0.05


class InfiniGramApi(BaseHTTPRequestHandler):
    """The API's protocol (POST ``{index, query_type, query_ids}``; ``prob`` and ``suffix_len`` back, or ``error``,
    or a ``message`` when it times out) over a local index: what ApiEngine speaks, without the network."""

    engine: LocalEngine
    busy = 0  # answer this many requests with a timeout message first
    seen: list

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(request)
        if InfiniGramApi.busy:
            InfiniGramApi.busy -= 1
            answer = {"message": "The server is busy"}
        elif request.get("index") != "test_index":
            answer = {"error": f"Invalid index: {request.get('index')}"}
        else:
            got = self.engine.infgram_prob(request["query_ids"])
            answer = {"prob": got.prob, "suffix_len": got.suffix_len, "prompt_cnt": 0, "cont_cnt": 0}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def api(tmp_path, monkeypatch):
    build_index(corpus(), tmp_path / "index")
    InfiniGramApi.engine, InfiniGramApi.seen, InfiniGramApi.busy = LocalEngine(str(tmp_path / "index")), [], 0
    server = HTTPServer(("127.0.0.1", 0), InfiniGramApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(infinigram, "RETRY_WAIT_S", 0)
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_the_api_engine_speaks_the_protocol_retries_timeouts_and_fails_in_one_line(api):
    local, remote = InfiniGramApi.engine, ApiEngine(api, "test_index", retries=3)
    ids = list(b"abca")
    assert remote.infgram_prob(ids) == local.infgram_prob(ids)
    assert InfiniGramApi.seen[-1] == {"index": "test_index", "query_type": "infgram_prob", "query_ids": ids}
    InfiniGramApi.busy = 2  # two timeouts, then the answer
    assert remote.infgram_prob(ids) == local.infgram_prob(ids)
    InfiniGramApi.busy = 3
    with pytest.raises(EngineFailure, match=f"infini-gram API {api} gave no answer in 3 tries .The server is busy"):
        remote.infgram_prob(ids)
    with pytest.raises(EngineFailure, match="Invalid index: other"):  # a bad request is not retried
        ApiEngine(api, "other", retries=3).infgram_prob(ids)
    with pytest.raises(EngineFailure, match="gave no answer in 2 tries .ConnectionError"):
        ApiEngine("http://127.0.0.1:9/", "test_index", retries=2).infgram_prob(ids)


def test_a_trace_logs_rho_with_its_error_and_the_item_table_it_is_computed_from(
    tmp_path, cache_dir, tiny_checkpoints, store
):
    run_app([*TINY, "sampler.n=0", "eval.toy_n_docs=0", "eval.ablation_k=[]"], tmp_path, cache_dir, store)
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs(["1"])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "behavior/memorization")}
    assert sorted(history) == [0, 1, 3, 12, 40]
    assert history[40] > history[0] + 0.1  # training pulls the model towards its corpus's statistics
    for step, rho in history.items():
        path = client.download_artifacts(run.info.run_id, f"memorization/items_step{step}.csv", str(tmp_path))
        table = pd.read_csv(path)
        assert len(table) == 300 and {"prompt", "answer", "model_logprob", "infgram_logprob", "suffix_len"} <= set(
            table
        )
        kept = table.dropna(subset=["infgram_logprob"])
        assert rho == pytest.approx(spearmanr(kept["model_logprob"], kept["infgram_logprob"]).statistic, abs=1e-12)
    metrics = run.data.metrics
    assert metrics["behavior/memorization_items"] == len(kept) and 0 < metrics["behavior/memorization_se"] < 0.2
    by_phase = pd.read_csv(client.download_artifacts(run.info.run_id, "downstream/by_phase.csv", str(tmp_path)))
    (whole,) = by_phase[by_phase["metric"] == "memorization"].to_dict("records")  # one phase: warmup
    assert whole["change"] == pytest.approx(history[40] - history[0]) and whole["change_se"] > 0
    index = [p for p in cache_dir.glob("toy-*-infinigram") if p.is_dir()]
    assert len(index) == 1 and IndexInfo.read(index[0]).documents == 1500  # the toy's pretraining corpus, once


def test_post_training_logs_memorizations_change_paired_over_items(tmp_path, cache_dir, tiny_checkpoints, store):
    fast = ["++method.args.max_steps=2", "++method.geometry_every=1", "++method.args.per_device_train_batch_size=4"]
    args = [*TINY, "sampler.n=0", "eval.ablation_k=[]", "method=sft", *fast, "eval.memorization.limit=100"]
    run_app(args, tmp_path, cache_dir, store)
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs(["1"])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "behavior/memorization")}
    assert sorted(history) == [0, 2]
    assert run.data.metrics["behavior/memorization_change"] == pytest.approx(history[2] - history[0], abs=1e-12)
    assert run.data.metrics["behavior/memorization_change_se"] >= 0


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("eval.memorization.items={missing}", "eval.memorization.items={missing}: no such file; valid: toy, triviaqa"),
        ("eval.memorization.items={bad}", "bad.jsonl:2 needs non-empty string fields 'question' and 'answer'"),
        (
            "eval.memorization.index={folder}",
            "no geomsweep infini-gram index at {folder} (geomsweep-index.json missing)",
        ),
        (
            "eval.memorization.engine=api eval.memorization.api_url=http://127.0.0.1:9/ eval.memorization.retries=1",
            "eval.memorization.engine=api: infini-gram API http://127.0.0.1:9/ gave no answer in 1 tries",
        ),
    ],
    ids=["missing items", "malformed items", "no index", "unreachable api"],
)
def test_a_memorization_fault_is_one_line_before_any_run(tmp_path, cache_dir, override, said):
    paths = {"missing": tmp_path / "missing.jsonl", "bad": tmp_path / "bad.jsonl", "folder": tmp_path}
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n')
    args = [*TINY, "sampler.n=0", *override.format(**paths).split()]
    proc = run_app(args, tmp_path, cache_dir, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("geomsweep: invalid config: ") and said.format(**paths) in line, line
    assert not (tmp_path / "mlflow.db").exists()


def test_toy_items_are_the_toy_worlds_only(tmp_path, cache_dir):
    proc = run_app(["model=smollm2-135m", "eval.memorization.items=toy"], tmp_path, cache_dir, check=False)
    assert "eval.memorization.items=toy holds the toy world's documents: model.source=toy only" in proc.stderr


def test_jsonl_items_take_the_papers_prompt(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"question": "Capital of France", "answer": " Paris "}\n\n{"question": "2+2?", "answer": "4"}\n')
    assert jsonl_items(path, None) == [
        QAItem("Question: Capital of France? Answer:", "Paris", 0),
        QAItem("Question: 2+2? Answer:", "4", 1),
    ]
    assert len(jsonl_items(path, 1)) == 1


def test_an_edited_item_file_or_a_rebuilt_index_is_a_new_cell(tmp_path):
    from types import SimpleNamespace

    from geomsweep.config.measurement import EvalConfig, MemorizationConfig
    from geomsweep.tracking.identity import data_files_digest

    items = tmp_path / "items.jsonl"
    items.write_text('{"question": "q1", "answer": "a"}\n')
    build_index(corpus(), tmp_path / "index")
    memorization = MemorizationConfig(items=str(items), index=str(tmp_path / "index"))
    task = SimpleNamespace(source="arithmetic", ood=None)
    settings = SimpleNamespace(
        data=SimpleNamespace(source="toy"), task=task, eval=EvalConfig(memorization=memorization)
    )
    before = data_files_digest(settings)
    items.write_text('{"question": "q2", "answer": "a"}\n')
    after_items = data_files_digest(settings)
    build_index(corpus(seed=1), tmp_path / "index")
    assert len({before, after_items, data_files_digest(settings)}) == 3


def test_items_that_continue_one_another_share_one_carrier_sequence():
    from geomsweep.behavior.memorization import carriers

    sequences = [[1, 2], [1, 2, 3], [1, 4], [1, 2, 3, 5], [2], [1, 2, 3]]
    kept, held = carriers(sequences)
    assert kept == [[1, 2, 3, 5], [1, 4], [2]]
    assert [kept[h] for h in held] == [[1, 2, 3, 5], [1, 2, 3, 5], [1, 4], [1, 2, 3, 5], [2], [1, 2, 3, 5]]


def test_the_models_side_is_the_answers_log_probability_item_by_item(tiny_checkpoints):
    import torch

    from geomsweep.behavior.memorization import model_logprobs
    from geomsweep.config.toy import ToyConfig
    from geomsweep.sources.checkpoints import Checkpoint
    from geomsweep.sources.qa_items import toy_items
    from geomsweep.sources.toy.pretrain import EOS
    from tests.conftest import TINY_TOY

    model, tokenizer = Checkpoint("final", 0, None, str(tiny_checkpoints / "step40")).load()
    items = toy_items(ToyConfig(**TINY_TOY), 60, EOS)  # three documents' words: they continue one another
    ours = model_logprobs(model, tokenizer, items)
    for item, value in zip(items, ours):  # one forward pass per item, unpadded
        prompt = tokenizer(item.prompt)["input_ids"]
        full = tokenizer(f"{item.prompt} {item.answer}")["input_ids"]
        with torch.inference_mode():
            logprobs = model(torch.tensor([full])).logits[0].log_softmax(-1)
        expected = sum(float(logprobs[t - 1, full[t]]) for t in range(len(prompt), len(full)))
        assert value == pytest.approx(expected, abs=1e-4)
