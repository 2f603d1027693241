"""The spectral-tail ablation: closed-form values on tiny inputs, real models."""

import pytest
import torch

from geomsweep.core.ablation import projected, tail_ablation, top_directions
from geomsweep.core.spectra import StreamingCovariance


class LinearHead(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.head.weight.data = weight

    def get_output_embeddings(self):
        return self.head

    def forward(self, hidden):
        return self.head(hidden)


def covariance_of(x):
    cov = StreamingCovariance()
    cov.update(x)
    return cov


def test_projection_keeps_or_removes_the_top_directions():
    # The 8 sign patterns of (2, 1, 3) around the mean (1, 1, 1): a diagonal covariance, largest along axis 2,
    # then 0, then 1, so the top-2 directions are exactly axes 2 and 0.
    signs = torch.tensor([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=torch.float64)
    x = signs * torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64) + 1
    cov = covariance_of(x)
    basis = top_directions(cov, 2)
    assert basis[:, 0].abs().argmax() == 2 and basis[:, 1].abs().argmax() == 0
    model = LinearHead(torch.eye(3, dtype=torch.float64))
    h = torch.tensor([[5.0, 7.0, -3.0]], dtype=torch.float64)
    with torch.no_grad(), projected(model, cov.mean, basis, keep=True):
        kept = model(h)
    with torch.no_grad(), projected(model, cov.mean, basis, keep=False):
        removed = model(h)
    with torch.no_grad():
        assert torch.allclose(model(h), h)  # the hook is gone after the block
    assert kept[0].tolist() == pytest.approx([5.0, 1.0, -3.0])  # axis 1 falls back to the mean
    assert removed[0].tolist() == pytest.approx([1.0, 7.0, 1.0])  # axes 2 and 0 fall back to the mean


def test_tail_ablation_reports_every_variant_and_rejects_bad_k():
    x = torch.randn(500, 4, dtype=torch.float64)
    model = LinearHead(torch.eye(4, dtype=torch.float64))
    probe = torch.tensor([[3.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    results = tail_ablation(model, covariance_of(x), [1, 4], lambda: {"argmax0": float(model(probe).argmax() == 0)})
    assert results["full/argmax0"] == 1.0 and results["top4_only/argmax0"] == 1.0  # K = D changes nothing
    assert set(results) == {
        "full/argmax0",
        "top1_only/argmax0",
        "without_top1/argmax0",
        "top4_only/argmax0",
        "without_top4/argmax0",
    }
    with pytest.raises(ValueError, match="ablation K=5 must lie in 1..4"):
        tail_ablation(model, covariance_of(x), [5], lambda: {})
