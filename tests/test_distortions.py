"""Each pNR-family distortion on small tensors, with a fixed seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainers.distortions import REGISTRY, DistortionContext, distortion_class, make_distortion
from trainers.distortions.pruning import cubic_rate, prune_global, prune_smallest
from trainers.distortions.quantization import binary_code_quantize

CTX = DistortionContext(step=10, total_steps=100, event=0, num_events=10, seed=0)


@pytest.fixture
def w() -> torch.Tensor:
    return torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0))


def test_registry_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: .*prune.*quantize"):
        distortion_class("prunes")


def test_every_registered_distortion_imports():
    for name in REGISTRY:
        assert distortion_class(name).name == name


def test_bad_knob_names_the_knobs():
    with pytest.raises(ValueError, match="knobs are: theta"):
        make_distortion("weight_decay", thetta=0.1)


def test_weight_decay_scales(w):
    out = make_distortion("weight_decay", theta=0.1).apply({"w": w}, CTX)["w"]
    torch.testing.assert_close(out, 0.9 * w)


def test_uniform_noise_statistics():
    w = torch.full((200_000,), 2.0)
    out = make_distortion("uniform_noise", a=0.3).apply({"w": w}, CTX)["w"]
    u = 1 - out / w  # u ~ U(-a, a): mean 0, var a²/3, bounded by a
    assert u.abs().max() <= 0.3 + 1e-6
    assert abs(u.mean().item()) < 3e-3
    assert u.var().item() == pytest.approx(0.3**2 / 3, rel=0.02)


def test_gaussian_noise_statistics():
    w = torch.zeros(200_000)
    eps = make_distortion("gaussian_noise", eta=0.05).apply({"w": w}, CTX)["w"]
    assert abs(eps.mean().item()) < 1e-3
    assert eps.std().item() == pytest.approx(0.05, rel=0.02)


def test_noise_is_reproducible_per_event_and_leaves_global_rng_alone(w):
    d = make_distortion("gaussian_noise", eta=0.1)
    state = torch.get_rng_state()
    a = d.apply({"w": w}, CTX)["w"]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, d.apply({"w": w}, CTX)["w"])
    other = DistortionContext(step=20, total_steps=100, event=1, num_events=10, seed=0)
    assert not torch.equal(a, d.apply({"w": w}, other)["w"])


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.9])
def test_layer_pruning_hits_exact_rate(w, rate):
    out = prune_smallest(w, rate)
    k = round(rate * w.numel())
    assert int((out == 0).sum()) == k
    if k:  # the zeroed ones are the smallest in magnitude
        assert w.abs()[out == 0].max() <= w.abs()[out != 0].min()
    assert torch.equal(out[out != 0], w[out != 0])


def test_global_pruning_uses_one_threshold():
    a = torch.tensor([0.1, 0.2, 0.3, 0.4])
    b = torch.tensor([5.0, 6.0, 7.0, 8.0])
    out = prune_global({"a": a, "b": b}, 0.5)
    assert torch.equal(out["a"], torch.zeros(4))
    assert torch.equal(out["b"], b)


def test_pruning_masks_are_recomputed_each_event():
    d = make_distortion("prune", rate=0.5)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    first = d.apply({"w": w}, CTX)["w"]
    regrown = first + torch.tensor([10.0, 0.0, 0.0, 0.0])  # a pruned weight grows back
    second = d.apply({"w": regrown}, CTX)["w"]
    assert second[0] == 10.0 and second[2] == 0.0


def test_gradual_schedule_is_cubic():
    assert cubic_rate(0, 0.9, 0.0, 0, 100) == 0.0
    assert cubic_rate(50, 0.9, 0.0, 0, 100) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert cubic_rate(100, 0.9, 0.0, 0, 100) == 0.9
    assert cubic_rate(500, 0.9, 0.0, 0, 100) == 0.9
    d = make_distortion("prune", rate=0.8, schedule="gradual", ramp_start=0.0, ramp_end=0.5)
    end = DistortionContext(step=60, total_steps=100, event=5, num_events=10)
    assert d.rate_at(end) == 0.8


def test_bad_pruning_knobs_are_all_reported():
    with pytest.raises(ValueError) as e:
        make_distortion("prune", rate=1.5, scope="local", schedule="fast")
    msg = str(e.value)
    assert "rate" in msg and "scope" in msg and "schedule" in msg


def test_one_bit_quantization_is_alpha_sign(w):
    wq, alpha, _ = binary_code_quantize(w, bits=1)
    rows = w.reshape(3, -1)
    expected = rows.abs().mean(dim=1, keepdim=True) * torch.where(rows >= 0, 1.0, -1.0)
    torch.testing.assert_close(wq.reshape(3, -1), expected)
    # mean|w| is the optimal scale for codes sign(w): the derivative of the error vanishes.
    a = alpha[:, 0].clone().requires_grad_(True)
    err = ((rows - a[:, None] * torch.sign(rows)) ** 2).sum()
    (g,) = torch.autograd.grad(err, a)
    assert g.abs().max() < 1e-5


def test_quantization_error_falls_as_bits_rise():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    errs = [(binary_code_quantize(w, bits=q)[0] - w).square().mean().item() for q in (1, 2, 3, 4)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs


def test_quantized_values_are_codes(w):
    wq, alpha, code = binary_code_quantize(w, bits=2)
    assert set(code.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(wq.reshape(3, -1), (code * alpha[:, None, :]).sum(-1))
    d = make_distortion("quantize", bits=2)
    assert d.stored_params("w", w) == pytest.approx(2 * 36 / 32 + 2 * 3)


def test_pruning_rate_is_exact_with_ties_at_the_threshold():
    w = torch.tensor([1.0, -1.0, 1.0, 1.0, 2.0, 2.0])
    out = prune_smallest(w, 0.5)
    assert int((out == 0).sum()) == 3 and torch.equal(out[4:], w[4:])


@pytest.mark.parametrize("zero_fraction", [0.0, 0.05, 0.4, 0.95])
@pytest.mark.parametrize("rate", [0.3, 0.9])
def test_pruning_drops_the_k_smallest_lowest_index_first(zero_fraction, rate):
    # A layer whose pruned weights got no gradient is mostly exact zeros: the selection sets
    # them aside; the result must still be the first k of a stable sort by magnitude.
    g = torch.Generator().manual_seed(0)
    w = (torch.randint(-40, 41, (64, 48), generator=g) / 8).float()  # ties as well
    w[torch.rand(w.shape, generator=g) < zero_fraction] = 0.0
    k = round(rate * w.numel())
    expected = torch.ones(w.numel(), dtype=torch.bool)
    expected[np.argsort(w.abs().flatten().numpy(), kind="stable")[:k]] = False
    out = prune_smallest(w, rate)
    assert torch.equal(out.flatten() != 0, expected & (w.flatten() != 0))
    assert torch.equal(out[out != 0], w[out != 0])


def test_pruning_selects_the_same_entries_on_the_numpy_and_torch_paths():
    # float32 on CPU takes the numpy selection, float16 the torch.kthvalue one.
    g = torch.Generator().manual_seed(0)
    w = (torch.randint(-8, 9, (3, 4, 3), generator=g) / 4).float()  # many ties
    for rate in (0.3, 0.5, 0.75):
        a, b = prune_smallest(w, rate), prune_smallest(w.half(), rate)
        assert torch.equal(a == 0, b == 0)
        assert int((a == 0).sum()) == round(rate * w.numel())
