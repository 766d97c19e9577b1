"""CP decomposition (Lebedev et al. 2015) through TensorLy: reconstruction, export to the
four-layer pipeline with equal outputs (strides, paddings, dilations), ranks, training."""

from __future__ import annotations

import warnings

import pytest
import tensorly as tl
import torch
from tensorly.decomposition import parafac
from torch import nn

from trainers.distortions import DistortionContext, make_distortion
from trainers.distortions.cp import CP, cp_approx, cp_factors, cp_rank
from trainers.export import export
from trainers.loop import Trainer

CTX = DistortionContext(step=1, total_steps=1, event=0, num_events=1)


@pytest.fixture(autouse=True)
def _quiet_and_single_threaded():
    # TensorLy warns when R exceeds a mode's size (its SVD start is then padded); tiny ALS
    # problems run fastest on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape,rank", [((6, 4, 3, 3), 5), ((8, 3, 1, 5), 2), ((7, 5), 3)])
def test_reconstruction_matches_tensorly_cp_to_tensor(shape, rank):
    torch.manual_seed(0)
    w = torch.randn(shape)
    ours = cp_approx(w, rank, iters=30)
    backend = tl.get_backend()
    with tl.backend_context("pytorch"):
        cp = parafac(w.double(), rank=rank, n_iter_max=30, init="svd", tol=0, random_state=0)
        reference = tl.cp_to_tensor(cp)
    assert tl.get_backend() == backend  # the process's TensorLy backend is left as it was
    assert ours.dtype == w.dtype and ours.shape == w.shape
    torch.testing.assert_close(ours.double(), reference, atol=1e-6, rtol=1e-6)
    factors = cp_factors(w, rank, iters=30)
    assert [tuple(f.shape) for f in factors] == [(n, rank) for n in shape]
    # a better approximation than nothing, and an exact one of a tensor that is rank R already
    assert (ours - w).norm() < w.norm()
    torch.testing.assert_close(cp_approx(ours, rank, iters=1000), ours, atol=1e-4, rtol=1e-4)


CONVS = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
    dict(kernel_size=3, padding=2, dilation=2, bias=False),
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=5, stride=3, padding=(0, 1)),
]


@pytest.mark.parametrize("kwargs", CONVS, ids=[str(k) for k in CONVS])
def test_exported_conv_computes_the_distorted_conv(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, **kwargs)
    d = CP(rank=3, iters=20)
    with torch.no_grad():
        conv.weight.copy_(d.apply({"w": conv.weight.detach()}, CTX)["w"])
    layer = d.export_layer(conv, conv.weight.detach())
    kinds = [(m.kernel_size, m.groups) for m in layer]
    k = conv.kernel_size
    assert kinds == [((1, 1), 1), ((k[0], 1), 3), ((1, k[1]), 3), ((1, 1), 1)]
    x = torch.randn(2, 4, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-4)
    stored = sum(p.numel() for p in layer.parameters()) - (6 if conv.bias is not None else 0)
    assert stored == d.stored_params("w", conv.weight) == 3 * (4 + 6 + k[0] + k[1])


def test_export_of_a_whole_model_keeps_its_outputs_and_a_linear_is_two_layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 10),
    )  # fmt: skip
    targets = ["0.weight", "2.weight", "4.weight"]
    d = make_distortion("cp", ratio=0.3, iters=20)
    params = dict(model.named_parameters())
    after = d.apply({t: params[t].detach() for t in targets}, CTX)
    with torch.no_grad():
        for t in targets:
            params[t].copy_(after[t])
    small = export(model, d, targets)
    assert isinstance(small[4], nn.Sequential) and len(small[4]) == 2
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_ranks_from_ratio_and_bad_knobs():
    assert cp_rank((16, 6, 5, 5), None, 0.5) == round(0.5 * 2400 / 32) == 38
    assert cp_rank((10, 84), None, 0.01) == 1 and cp_rank((16, 6, 5, 5), 7, None) == 7
    for bad in (
        {},
        {"rank": 2, "ratio": 0.5},
        {"rank": 0},
        {"ratio": 1.5},
        {"rank": 2, "iters": 0},
    ):
        with pytest.raises(ValueError, match="cp: "):
            CP(**bad)
    assert CP(rank=2).validate({"bn.weight": torch.ones(4)})[0].startswith("cp: layer 'bn.weight'")
    reflect = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        CP(rank=2).export_layer(reflect, reflect.weight.detach())


def test_training_with_cp_ends_on_rank_r_kernels_that_export_exactly(tiny_config):
    cfg = tiny_config(compression={"method": "cp", "pnr": 5, "params": {"rank": 2, "iters": 10}})
    t = Trainer(cfg)
    final = t.fit()
    assert final["num_distortions"] == 4 and final["compression_ratio"] > 1
    assert t.targets and all(p.dim() == 4 for p in t.targets.values())  # convs by default
    small = export(t.model, t.distortion, list(t.targets))
    t.model.eval()
    small.eval()
    x = next(iter(t.data.test.epoch(0, 0)))[0]
    with torch.no_grad():
        torch.testing.assert_close(small(x), t.model(x), atol=1e-4, rtol=1e-4)
