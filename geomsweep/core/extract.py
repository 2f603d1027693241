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

from geomsweep.core.definitions import ALL_LAYERS, Norm, PaddingSide
from geomsweep.core.spectra import StreamingCovariance
from geomsweep.core.states import DirectionSum, LastTokenCovariance, NextTokenLoss, Reservoir

FINAL_NORM_NAMES = ("final_layer_norm", "norm", "ln_f", "final_layernorm")


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
    if padding_side not in PaddingSide.__members__:
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
    """The states one pass over probe sequences accumulates: each layer's last-token covariance (with its jackknife
    groups) and, when asked for, the next-token loss of the same forward passes."""

    layers: dict[int, LastTokenCovariance]
    next_token: NextTokenLoss | None = None
    directions: dict[int, DirectionSum] = field(default_factory=dict)  # for anisotropy, when asked for
    reservoirs: dict[int, Reservoir] = field(default_factory=dict)  # for TwoNN, when asked for

    @property
    def covariances(self) -> dict[int, StreamingCovariance]:
        return {layer: state.compute() for layer, state in self.layers.items()}

    @property
    def groups(self) -> dict[int, list[StreamingCovariance]]:
        """Each layer's disjoint groups, when there is more than one."""
        return {layer: state.groups for layer, state in self.layers.items() if len(state.groups) > 1}

    @property
    def loss(self) -> float:
        """Mean cross-entropy over non-padding next-token predictions (NaN when not asked for)."""
        return self.next_token.compute() if self.next_token else float("nan")

    @property
    def loss_tokens(self) -> int:
        """How many predictions the loss averages."""
        return self.next_token.count if self.next_token else 0

    def merge(self, other: Representations) -> Representations:
        """Fold in the representations of other sequences (another process's share); returns self."""
        for layer, state in self.layers.items():
            state.merge(other.layers[layer])
        for mine, theirs in ((self.directions, other.directions), (self.reservoirs, other.reservoirs)):
            for layer, state in mine.items():
                state.merge(theirs[layer])
        if self.next_token is not None:
            self.next_token.merge(other.next_token)
        return self


def resolve_layers(model, layers) -> list[int]:
    """The hidden_states indices to measure: as named, or for ``all`` the final one (the headline) then every
    other from the embeddings (0) up."""
    if layers == ALL_LAYERS:
        return [-1, *range(model.config.num_hidden_layers)]
    return list(layers)


def check_layers(model, layers: Sequence[int]) -> int:
    """The number of hidden states the model returns (embeddings + one per layer); an error naming bad indices."""
    depth = model.config.num_hidden_layers
    if depth < 1:  # transformers returns no hidden state at all then
        raise ValueError(f"the model has num_hidden_layers={depth}: no layer whose representations could be measured")
    n_states = depth + 1
    bad = [layer for layer in layers if not -n_states <= layer < n_states]
    if bad:
        raise ValueError(f"layers {bad} out of range: this model has hidden_states indices {-n_states}..{n_states - 1}")
    return n_states


@contextmanager
def final_norm_inputs(model, enabled: bool) -> Iterator[list[torch.Tensor]]:
    """While enabled, the input of the final norm (the residual stream before it) of each forward pass."""
    inputs: list[torch.Tensor] = []
    hook = final_norm(model).register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) if enabled else None
    try:
        yield inputs
    finally:
        if hook is not None:
            hook.remove()


def forward(model, batch, device) -> tuple:
    """(outputs with every hidden state, attention mask) of one batch. Positions count real tokens only, so
    left-padded rows see the same positions as unpadded ones."""
    mask = batch["attention_mask"].to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    ids = batch["input_ids"].to(device)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True), mask


def last_token_states(states: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Each row's state at its last real token, in float32 (with a device_map, states may sit on any GPU)."""
    rows = torch.arange(len(last), device=states.device)
    return states[rows, last.to(states.device)].float()


@torch.inference_mode()
def accumulate(
    model,
    batches: Iterable,
    layers: Sequence[int] = (-1,),
    norm: str = "post",
    progress: bool = True,
    total: int | None = None,
    with_loss: bool = True,
    groups: torch.Tensor | None = None,
    start: int = 0,
    directions: bool = False,
    reservoir: int = 0,
    seed: int = 0,
) -> Representations:
    """Stream last-token representations of the given layers into one covariance state per layer (split into
    jackknife groups by ``groups``, the group of each sequence of the whole probe set: ``jackknife_groups``) and the
    next-token loss of the same passes. ``start``: the index of the first sequence in the whole probe set, when
    ``batches`` are one process's share of it. ``directions`` also keeps each layer's sum of unit vectors
    (anisotropy), ``reservoir=R`` a seeded sample of R of its representations (TwoNN)."""
    if norm not in Norm.__members__:
        raise ValueError(f"probe.norm must be one of {', '.join(Norm)}, got {norm!r}")
    n_states = check_layers(model, layers)
    reps = Representations(
        {layer: LastTokenCovariance(groups) for layer in layers},
        NextTokenLoss() if with_loss else None,
        {layer: DirectionSum(groups) for layer in layers} if directions else {},
        {layer: Reservoir(reservoir, seed) for layer in layers} if reservoir else {},
    )
    device, seen = next(model.parameters()).device, start
    with eval_mode(model), final_norm_inputs(model, norm == "pre") as pre_norm:
        for batch in tqdm(
            batches, desc="representations", unit="batch", total=total, disable=not progress, leave=False
        ):
            out, mask = forward(model, batch, device)
            last = last_token_index(mask)
            for layer, state in reps.layers.items():
                final = layer in (-1, n_states - 1)
                states = pre_norm[-1] if (norm == "pre" and final) else out.hidden_states[layer]
                rows = last_token_states(states, last)
                state.update(rows, seen)
                for extra in (reps.directions.get(layer), reps.reservoirs.get(layer)):
                    if extra is not None:
                        extra.update(rows, seen)
            if reps.next_token is not None:
                reps.next_token.update(out.logits, batch["input_ids"].to(device), mask)
            seen += len(mask)
            pre_norm.clear()
    return reps


def next_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log P(token_t | tokens < t) for t >= 1, shape (B, T - 1), on the CPU in float32 (padding included)."""
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None].to(device))[..., 0].cpu()
