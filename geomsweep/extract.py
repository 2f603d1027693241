"""Hidden states of a causal LM -> one vector per sequence -> streaming covariance, one per layer.

The study's representation is the last non-padding token of the final layer after the final norm, which is
``hidden_states[-1]`` in transformers. Other layers (indices into ``hidden_states``, 0 = embeddings) come from
the same forward pass; ``norm="pre"`` replaces the final layer by the residual stream before the final norm.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from geomsweep.spectra import StreamingCovariance

FINAL_NORM_NAMES = ("final_layer_norm", "norm", "ln_f", "final_layernorm")
NORM_CHOICES = ("post", "pre")


@contextmanager
def eval_mode(model, tokenizer=None, padding_side: str | None = None) -> Iterator[None]:
    """Inside the block: the model in eval mode, the tokenizer padding on ``padding_side`` (when given) with a pad
    token (its EOS when it has none). On exit both are as they were, so measuring never changes what it measures."""
    was_training = model.training
    side = tokenizer.padding_side if tokenizer is not None else None
    had_pad = tokenizer is None or tokenizer.pad_token is not None
    model.eval()
    if tokenizer is not None:
        if padding_side is not None:
            tokenizer.padding_side = padding_side
        if not had_pad:
            tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        model.train(was_training)
        if tokenizer is not None:
            tokenizer.padding_side = side
            if not had_pad:
                tokenizer.pad_token = None


def encode_batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int, padding_side: str = "right"):
    """Tokenize texts into padded batches, lazily: memory stays flat however many texts there are. The tokenizer
    is not changed (its padding side is passed per call); it needs a pad token (``eval_mode`` lends one)."""
    if not texts:
        raise ValueError("the probe dataset is empty: no sequences to measure")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if tokenizer.pad_token is None:
        raise ValueError(
            "the tokenizer has no pad token: encode inside eval_mode(model, tokenizer), which lends it its EOS token"
        )
    return (
        tokenizer(
            list(texts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            padding_side=padding_side,
        )
        for i in range(0, len(texts), batch_size)
    )


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last non-padding token of each row, under left or right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def final_norm(model) -> torch.nn.Module:
    base = model.base_model
    for name in FINAL_NORM_NAMES:
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(
        f"cannot find the final norm of {type(model).__name__} (looked for {', '.join(FINAL_NORM_NAMES)}); "
        f"use probe.norm=post"
    )


@dataclass
class Representations:
    """Per-layer covariance accumulators, plus the next-token loss of the same forward passes."""

    covariances: dict[int, StreamingCovariance]
    loss: float  # mean cross-entropy over non-padding next-token predictions (NaN when not asked for)
    groups: dict[int, list[StreamingCovariance]] = field(default_factory=dict)  # disjoint shards, when asked for
    loss_tokens: int = 0  # how many predictions the loss averages

    def merge(self, other: Representations) -> Representations:
        """Fold in the representations of other sequences (another process's share); returns self. Like
        ``StreamingCovariance.merge``: the union's state, whichever way the sequences were split."""
        for layer, covariance in self.covariances.items():
            covariance.merge(other.covariances[layer])
        for layer, parts in self.groups.items():
            for part, theirs in zip(parts, other.groups[layer]):
                part.merge(theirs)
        tokens = self.loss_tokens + other.loss_tokens
        if tokens:
            self.loss = sum(r.loss * r.loss_tokens for r in (self, other) if r.loss_tokens) / tokens
        self.loss_tokens = tokens
        return self


@torch.inference_mode()
def accumulate(
    model,
    batches: Iterable,
    layers: Sequence[int] = (-1,),
    norm: str = "post",
    progress: bool = True,
    total: int | None = None,
    with_loss: bool = True,
    groups: int = 1,
    start: int = 0,
) -> Representations:
    """Stream last-token representations of the given layers into one covariance accumulator per layer; with
    ``groups=K`` > 1, sequence i goes to group i mod K's accumulator and the layer's is their merge. ``start``: the
    index of the first sequence in the whole probe set, when ``batches`` are one process's share of it."""
    if norm not in NORM_CHOICES:
        raise ValueError(f"probe.norm must be one of {', '.join(NORM_CHOICES)}, got {norm!r}")
    n_states = model.config.num_hidden_layers + 1
    bad = [layer for layer in layers if not -n_states <= layer < n_states]
    if bad:
        raise ValueError(f"layers {bad} out of range: this model has hidden_states indices {-n_states}..{n_states - 1}")
    shards = {layer: [StreamingCovariance() for _ in range(groups)] for layer in layers}
    seen = start
    pre_norm: list[torch.Tensor] = []
    hook = None
    if norm == "pre":
        hook = final_norm(model).register_forward_pre_hook(lambda _m, args: pre_norm.append(args[0]))
    device = next(model.parameters()).device
    loss_sum, loss_count = 0.0, 0
    try:
        with eval_mode(model):
            for batch in tqdm(
                batches, desc="representations", unit="batch", total=total, disable=not progress, leave=False
            ):
                mask = batch["attention_mask"].to(device)
                # Positions count real tokens only, so left-padded rows see the same positions as unpadded ones.
                positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
                out = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=mask,
                    position_ids=positions,
                    output_hidden_states=True,
                )
                rows, last = torch.arange(mask.shape[0], device=device), last_token_index(mask)
                for layer in layers:
                    final = layer in (-1, n_states - 1)
                    states = pre_norm[-1] if (norm == "pre" and final) else out.hidden_states[layer]
                    # With a device_map, layers (and so their states) may sit on different GPUs.
                    last_states = states[rows.to(states.device), last.to(states.device)].float()
                    group = (torch.arange(len(last_states), device=last_states.device) + seen) % groups
                    for g, shard in enumerate(shards[layer]):
                        shard.update(last_states if groups == 1 else last_states[group == g])
                seen += len(rows)
                pre_norm.clear()
                if with_loss:
                    # Shift the targets, not the logits: flattening a sliced logits tensor would copy it.
                    both_real = torch.cat(
                        [(mask[:, 1:] * mask[:, :-1]) == 1, torch.zeros_like(mask[:, :1], dtype=torch.bool)], 1
                    )
                    targets = batch["input_ids"].to(device).roll(-1, dims=1).masked_fill(~both_real, -100)
                    targets = targets.to(out.logits.device)
                    loss_sum += float(
                        torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), reduction="sum")
                    )
                    loss_count += int(both_real.sum())
    finally:
        if hook is not None:
            hook.remove()
    covs = {layer: StreamingCovariance() for layer in layers}
    for layer, parts in shards.items():
        for part in parts:
            covs[layer].merge(part)
    loss = loss_sum / loss_count if loss_count else float("nan")
    return Representations(covs, loss, shards if groups > 1 else {}, loss_count)


def next_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log P(token_t | tokens < t) for t >= 1, shape (B, T - 1), on the CPU in float32 (padding included)."""
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None].to(device))[..., 0].cpu()
