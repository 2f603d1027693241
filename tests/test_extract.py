"""Batched last-token extraction must equal the naive one-sequence-per-forward-pass procedure."""

import pytest
import torch

from geomsweep.core.extract import accumulate, encode_batches, final_norm, last_token_index
from geomsweep.core.spectra import StreamingCovariance
from geomsweep.core.states import jackknife_groups
from geomsweep.sources.checkpoints import Checkpoint
from geomsweep.sources.toy.pretrain import ToyConfig, probe_documents
from tests.conftest import TINY_TOY


@pytest.fixture(scope="module")
def lm(tiny_checkpoints):
    model, tokenizer = Checkpoint("final", 40, None, str(tiny_checkpoints / "step40")).load()
    texts = probe_documents(ToyConfig(**TINY_TOY), 24)
    return model, tokenizer, texts


def one_at_a_time(model, tokenizer, texts, layer):
    """The paper authors' procedure: one unpadded sequence per forward pass."""
    rows, loss_sum, count = [], 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=48)["input_ids"]
            out = model(input_ids=ids, labels=ids, output_hidden_states=True)
            rows.append(out.hidden_states[layer][0, -1])
            loss_sum += float(out.loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return torch.stack(rows), loss_sum / count


def test_last_token_index_under_both_paddings():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(left).tolist() == [3, 3, 3]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_equals_one_sequence_at_a_time(lm, padding_side):
    model, tokenizer, texts = lm
    layers = [0, 1, -1]
    batches = list(encode_batches(tokenizer, texts, batch_size=5, max_length=48, padding_side=padding_side))
    assert any((b["attention_mask"] == 0).any() for b in batches), "the probe must actually contain padding"
    reps = accumulate(model, batches, layers=layers, progress=False)
    for layer in layers:
        reference, ref_loss = one_at_a_time(model, tokenizer, texts, layer)
        expected = StreamingCovariance()
        expected.update(reference)
        got = reps.covariances[layer]
        assert got.count == len(texts)
        torch.testing.assert_close(got.mean, expected.mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.compute(), expected.compute(), rtol=1e-4, atol=1e-4)
    assert reps.loss == pytest.approx(ref_loss, rel=1e-4)


def test_pre_norm_is_the_input_of_the_final_norm(lm):
    model, tokenizer, texts = lm
    # With one sequence, the accumulator's mean is that sequence's vector itself.
    batches = list(encode_batches(tokenizer, texts[:1], batch_size=1, max_length=48))
    pre = accumulate(model, batches, norm="pre", progress=False).covariances[-1].mean.float()
    post = accumulate(model, batches, norm="post", progress=False).covariances[-1].mean.float()
    assert not torch.allclose(pre, post, atol=1e-3)
    with torch.inference_mode():
        torch.testing.assert_close(final_norm(model)(pre[None])[0], post, rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_value(lm):
    model, tokenizer, texts = lm
    with pytest.raises(ValueError, match="probe dataset is empty"):
        encode_batches(tokenizer, [], 4, 16)
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'middle'"):
        encode_batches(tokenizer, texts, 4, 16, padding_side="middle")
    batches = list(encode_batches(tokenizer, texts[:2], 2, 16))
    with pytest.raises(ValueError, match=r"layers \[7\] out of range"):
        accumulate(model, batches, layers=[7], progress=False)
    with pytest.raises(ValueError, match="probe.norm must be one of post, pre, got 'mid'"):
        accumulate(model, batches, norm="mid", progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-3), ("bfloat16", 5e-2)])
def test_cuda_extraction_matches_cpu(tiny_checkpoints, dtype, tolerance):
    from geomsweep.core.spectra import spectral_geometry

    checkpoint = Checkpoint("final", 40, None, str(tiny_checkpoints / "step40"))
    texts = probe_documents(ToyConfig(**TINY_TOY), 256)

    def rankme(device, dtype):
        model, tokenizer = checkpoint.load(device, dtype)
        reps = accumulate(model, encode_batches(tokenizer, texts, 64, 48), progress=False)
        return spectral_geometry(reps.covariances[-1], fit_start=2, fit_end=20).rankme, reps.loss

    (cpu_rankme, cpu_loss), (gpu_rankme, gpu_loss) = rankme("cpu", "float32"), rankme("cuda", dtype)
    assert gpu_rankme == pytest.approx(cpu_rankme, rel=tolerance)
    assert gpu_loss == pytest.approx(cpu_loss, rel=tolerance)


@pytest.mark.parametrize("rule", ["block", "interleaved"])
def test_jackknife_groups_are_disjoint_parts_whose_merge_is_the_whole(lm, rule):
    model, tokenizer, texts = lm
    batches = list(encode_batches(tokenizer, texts, batch_size=5, max_length=48))
    whole = accumulate(model, batches, progress=False).covariances[-1]
    reps = accumulate(model, batches, progress=False, groups=jackknife_groups(len(texts), 4, rule))
    groups = reps.groups[-1]
    reference, _ = one_at_a_time(model, tokenizer, texts, -1)
    n = len(texts)
    for g, group in enumerate(groups):  # across batch boundaries: i * 4 // n (block), or i mod 4 (interleaved)
        members = [i for i in range(n) if (i * 4 // n if rule == "block" else i % 4) == g]
        if rule == "block":
            assert members == list(range(members[0], members[-1] + 1))  # a contiguous run of the probe order
        expected = StreamingCovariance()
        expected.update(reference[members])
        assert group.count == len(members)
        torch.testing.assert_close(group.compute(), expected.compute(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(reps.covariances[-1].compute(), whole.compute(), rtol=1e-10, atol=1e-12)


def test_a_bad_group_rule_or_count_is_refused_by_name():
    with pytest.raises(ValueError, match="block, interleaved, got 'random'"):
        jackknife_groups(10, 4, "random")
    with pytest.raises(ValueError, match="probe.jackknife=11 groups of 10 probe sequences; valid: 1..10"):
        jackknife_groups(10, 11)
    with pytest.raises(ValueError, match="3 document names for 10 probe sequences"):
        jackknife_groups(10, 2, documents=["a", "b", "c"])


def test_block_groups_move_their_boundaries_onto_document_starts():
    """Windows cut from documents of 3 to 10 texts, 8 block groups of 20: every boundary falls on a document start
    (no document is split) and each group keeps 1/2..3/2 of its share. A document longer than half a group is cut
    only where no start lies within a quarter group of the boundary, at the plain rule's place."""
    sizes = [7, 3, 10, 5, 9, 4, 8, 6, 10, 9, 5, 7, 10, 3, 8, 6, 10, 9, 8, 9, 7, 7]
    documents = [f"doc{d}" for d, size in enumerate(sizes) for _ in range(size)]
    n, k = len(documents), 8

    def split(groups, documents):
        return {d for d in set(documents) if len({int(g) for g, e in zip(groups, documents) if e == d}) > 1}

    groups = jackknife_groups(n, k, "block", documents)
    assert groups.tolist() == sorted(groups.tolist()) and set(groups.tolist()) == set(range(k))  # contiguous runs
    assert split(groups, documents) == set()
    counts = torch.bincount(groups, minlength=k)
    assert (counts >= n / k / 2).all() and (counts <= 1.5 * n / k).all(), counts
    plain = jackknife_groups(n, k)  # without documents, the plain rule i * K // N: here it splits documents
    assert plain.tolist() == [i * k // n for i in range(n)] and split(plain, documents)
    # a document of 70 texts (76..145) among them: groups of 28.75, boundaries at 86.25, 115 and 143.75 by the
    # plain rule; the last moves to its end (146: within 7.2), the two others have no start near and cut it
    long = documents[:76] + ["long"] * 70 + documents[76:]
    groups = jackknife_groups(len(long), k, "block", long)
    assert [i for i in range(76, 147) if groups[i] != groups[i - 1]] == [86, 115, 146]
    assert split(groups, long) == {"long"}
    assert jackknife_groups(n, k, "block", ["one"] * n).tolist() == jackknife_groups(n, k).tolist()
    assert jackknife_groups(n, k, "interleaved", documents).tolist() == [i % k for i in range(n)]  # ignores them


def test_shares_of_whole_batches_merge_into_the_one_pass_state(lm):
    """What each of several processes measures (geomsweep.core.processes: whole batches, group indices of the whole set)
    merges into exactly the one-process state: covariances, jackknife groups and the loss."""
    model, tokenizer, texts = lm
    batches = list(encode_batches(tokenizer, texts, batch_size=5, max_length=48))
    n = len(texts)  # block groups by the index in the whole set, which each share knows from its start
    groups = jackknife_groups(n, 4)
    whole = accumulate(model, batches, progress=False, groups=groups)
    first = accumulate(model, batches[:2], progress=False, groups=groups)
    second = accumulate(model, batches[2:], progress=False, groups=groups, start=10)
    merged = first.merge(second)
    assert merged.loss_tokens == whole.loss_tokens
    assert merged.loss == pytest.approx(whole.loss, rel=1e-12)
    torch.testing.assert_close(merged.covariances[-1].compute(), whole.covariances[-1].compute(), rtol=1e-12, atol=0)
    for mine, theirs in zip(merged.groups[-1], whole.groups[-1]):
        assert mine.count == theirs.count
        torch.testing.assert_close(mine.compute(), theirs.compute(), rtol=1e-12, atol=1e-15)
