"""The embedded world: deterministic, Zipfian, with the dependencies its probes rely on."""

from collections import Counter

import pytest
import torch

from geomsweep.behavior.toy_eval import NextWordItems, dependency_items, encode_items, next_word_accuracy
from geomsweep.sources.toy.corpus import RECALL_MARKER, generate_documents, make_language
from geomsweep.sources.toy.pretrain import ToyConfig, probe_documents


def test_corpus_is_deterministic_and_seed_dependent():
    lang = make_language(seed=0)
    assert generate_documents(lang, 50, seed=1) == generate_documents(make_language(seed=0), 50, seed=1)
    assert generate_documents(lang, 50, seed=1) != generate_documents(lang, 50, seed=2)


def test_word_frequencies_are_skewed():
    lang = make_language(seed=0)
    counts = Counter(w for d in generate_documents(lang, 2000, seed=3) for w in d.split())
    top = [c for _, c in counts.most_common(200)]
    assert top[0] > 20 * top[-1]  # Zipf: the head dwarfs the tail


def test_every_story_recalls_its_subject():
    lang = make_language(seed=0)
    for doc in generate_documents(lang, 200, seed=4, arithmetic_fraction=0.0):
        words = doc.split()
        assert words[-3] == RECALL_MARKER and words[-2] == words[0] and words[0] in lang.subjects


def test_document_lengths_follow_the_world_and_a_reversed_range_is_refused():
    from geomsweep.sources.toy.pretrain import train_documents

    short = ToyConfig(min_words=5, max_words=8, n_train_docs=300)
    bodies = [len(d.split()) - 4 for d in train_documents(short) if not d.startswith("sum ")]  # subject, so, subject, .
    assert min(bodies) == 5 and max(bodies) == 8
    long_range, _ = dependency_items(ToyConfig(min_words=50, max_words=60), 20, seed=1)  # held out: cut to 30 words
    assert max(len(p.split()) for p in long_range.prefixes) == 30 + 2
    with pytest.raises(ValueError, match="max_words=4 must be >= model.toy.min_words=5"):
        ToyConfig(min_words=5, max_words=4)
    # at the lengths every world had before these fields, the key (and so the cached pretraining) is the old one
    assert ToyConfig().key() == "010ba6c11521" and short.key() != ToyConfig(n_train_docs=300).key()


def test_probe_documents_end_at_varied_words():
    docs = probe_documents(ToyConfig(), 200)
    assert len({d.split()[-1] for d in docs}) > 50


def test_checkpoint_steps_are_log_spaced_and_include_both_ends():
    steps = ToyConfig(max_steps=1000, n_checkpoints=10, extra_steps=[500]).checkpoint_steps()
    assert steps[0] == 0 and steps[-1] == 1000 and 500 in steps and steps == sorted(set(steps))
    gaps = [b / a for a, b in zip(steps[1:], steps[2:]) if a >= 10]
    assert max(gaps) < 3


def test_dependency_items_and_accuracy(tiny_checkpoints):
    from geomsweep.sources.checkpoints import Checkpoint

    long_range, short_range = dependency_items(ToyConfig(n_words=600), 100, seed=5)
    assert len(long_range.prefixes) == 100 and len(short_range.prefixes) > 10
    assert all(
        p.split()[-1] == RECALL_MARKER and t == p.split()[0] for p, t in zip(long_range.prefixes, long_range.targets)
    )
    model, tokenizer = Checkpoint("s", 0, None, str(tiny_checkpoints / "step40")).load()
    # Targets made of the model's own greedy predictions (one at a time) score 1, any other token scores 0.
    prefixes = long_range.prefixes[:20]
    special = set(tokenizer.all_special_ids)
    with torch.inference_mode():
        predicted = [
            int(model(input_ids=tokenizer(p, return_tensors="pt")["input_ids"]).logits[0, -1].argmax())
            for p in prefixes
        ]
    other = [next(j for j in range(3, len(tokenizer)) if j != i and j not in special) for i in predicted]
    right = NextWordItems(prefixes, [tokenizer.decode([i]) for i in predicted])
    wrong = NextWordItems(prefixes, [tokenizer.decode([i]) for i in other])
    assert next_word_accuracy(model, encode_items(tokenizer, right, batch_size=7)) == pytest.approx(1.0)
    assert next_word_accuracy(model, encode_items(tokenizer, wrong, batch_size=7)) == 0.0
