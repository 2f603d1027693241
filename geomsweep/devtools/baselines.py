"""The baselines ``make bench`` measures geomsweep against, in the same process: the study authors' procedure, bare
batched forward passes, and the best-of-N timer."""

from __future__ import annotations

import time

import torch

from geomsweep.core.spectra import rankme

BATCH, MAX_LEN = 64, 64


def paper_procedure(model, tokenizer, texts, max_length: int = MAX_LEN):
    """One unpadded sequence per forward pass, keep all N x D rows, full SVD of the centered matrix."""
    rows = []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            rows.append(model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1])
    x = torch.stack(rows).double()
    singular = torch.linalg.svdvals(x - x.mean(dim=0))
    return rankme(singular**2 / (len(texts) - 1))


def bare_forward(model, batches):
    with torch.inference_mode():
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def timed(fn, *args, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best
