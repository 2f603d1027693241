"""In- and out-of-distribution behavior of a model on a task split, before and after post-training.

- ``loss``: mean next-token NLL of the reference completion given the prompt (completion tokens only).
- ``acc``: for tasks with checkable answers, the fraction of greedy completions whose answer is right;
  for preference-only tasks, the fraction of pairs where the chosen response is more likely than the rejected.
"""

from __future__ import annotations

import torch
from datasets import Dataset

from geomsweep.core.extract import eval_mode, next_token_logprobs
from geomsweep.sources.tasks import answer_of


def _encode_pairs(tokenizer, prompts: list[str], completions: list[str]):
    """Right-padded prompt+completion ids, and a mask of the completion tokens."""
    rows, masks = [], []
    for prompt, completion in zip(prompts, completions):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
        rows.append(full)
        masks.append([0] * len(p) + [1] * (len(full) - len(p)))
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    target = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    return ids, attention, target


@torch.inference_mode()
def completion_logprobs(model, tokenizer, prompts, completions, batch_size: int = 32) -> tuple[list[float], list[int]]:
    """Summed log-probability of each completion given its prompt, and its number of tokens."""
    sums, counts = [], []
    for i in range(0, len(prompts), batch_size):
        ids, attention, target = _encode_pairs(tokenizer, prompts[i : i + batch_size], completions[i : i + batch_size])
        logp = next_token_logprobs(model, ids, attention)
        mask = target[:, 1:].float()
        sums.extend((logp * mask).sum(-1).tolist())
        counts.extend(mask.sum(-1).int().tolist())
    return sums, counts


@torch.inference_mode()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    device = next(model.parameters()).device
    outputs = []
    with eval_mode(model, tokenizer, padding_side="left"):
        for i in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            generated = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            outputs.extend(
                tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            )
    return outputs


def evaluate_split(model, tokenizer, split: Dataset, extractor: str, max_new_tokens: int) -> dict[str, float]:
    with eval_mode(model, tokenizer):
        metrics = {}
        prompts = split["prompt"]
        if "completion" in split.column_names:
            sums, counts = completion_logprobs(model, tokenizer, prompts, split["completion"])
            metrics["loss"] = -sum(sums) / max(sum(counts), 1)
        if "answer" in split.column_names:
            said = greedy_answers(model, tokenizer, prompts, max_new_tokens)
            metrics["acc"] = sum(answer_of(s, extractor) == str(a) for s, a in zip(said, split["answer"])) / len(said)
        elif {"chosen", "rejected"} <= set(split.column_names):
            chosen, _ = completion_logprobs(model, tokenizer, prompts, split["chosen"])
            rejected, _ = completion_logprobs(model, tokenizer, prompts, split["rejected"])
            metrics["acc"] = sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
        return metrics
