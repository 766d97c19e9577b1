"""Low-rank distortions (SVD, tiled SVD, Tucker-2) on small tensors with fixed seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.decomposition import partial_tucker
from torch import nn

from trainers.counting import count_params
from trainers.distortions import DistortionContext, make_distortion
from trainers.distortions.svd import SVD, svd_approx
from trainers.distortions.tiled_svd import (
    TiledSVD,
    from_tiles,
    tiled_svd_approx,
    tiled_svd_approx_loop,
    tiled_svd_approx_many,
    to_tiles,
)
from trainers.distortions.tucker2 import (
    Tucker2,
    tucker2_approx,
    tucker2_factors,
    tucker2_ranks,
)
from trainers.export import export

CTX = DistortionContext(step=10, total_steps=100, event=0, num_events=10, seed=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest, and it keeps OpenMP from spinning against other
    processes on a busy 2-CPU machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------------------
# Knobs and validation


@pytest.mark.parametrize(
    ("name", "knobs", "match"),
    [
        ("svd", {"rank": 0}, "positive integer"),
        ("svd", {"rank": 2.5}, "positive integer"),
        ("svd", {"ratio": 0.0}, r"\(0, 1\]"),
        ("svd", {"ratio": 1.5}, r"\(0, 1\]"),
        ("svd", {}, "exactly one"),
        ("svd", {"rank": 2, "ratio": 0.5}, "exactly one"),
        ("tiled_svd", {"tile": 0, "rank": 1}, "tile must be a positive integer"),
        ("tiled_svd", {"tile": 4, "rank": 0}, "rank must be a positive integer"),
        ("tiled_svd", {"tile": 4, "rank": 5}, "rank ≤ 4"),
        ("tucker2", {"rc": 0.0}, r"\(0, 1\]"),
        ("tucker2", {"rc": 1.2}, r"\(0, 1\]"),
    ],
)
def test_impossible_knobs_raise(name, knobs, match):
    with pytest.raises(ValueError, match=match):
        make_distortion(name, **knobs)


def test_registry_builds_the_classes():
    assert isinstance(make_distortion("svd", rank=2), SVD)
    assert isinstance(make_distortion("tiled_svd", tile=4, rank=2), TiledSVD)
    assert isinstance(make_distortion("tucker2", rc=0.5), Tucker2)
    assert make_distortion("tiled_svd", tile=4, rank=2).config() == {"tile": 4, "rank": 2}


def test_svd_rank_larger_than_layer_names_layer_and_fix():
    weights = {"features.3.weight": randn(6, 2, 1, 1), "fc.weight": randn(10, 40)}
    problems = SVD(rank=8).validate(weights)
    assert len(problems) == 1
    msg = problems[0]
    assert "'features.3.weight'" in msg and "6×2" in msg and "rank ≤ 2" in msg
    assert SVD(ratio=0.5).validate(weights) == []


def test_tiled_svd_tile_not_dividing_names_layer_shape_and_tiles():
    weights = {"layer1.0.conv1.weight": randn(12, 4, 3, 3), "fc.weight": randn(8, 16)}
    problems = TiledSVD(tile=8, rank=2).validate(weights)
    assert len(problems) == 1
    msg = problems[0]
    # lowered 12×36; gcd 12 → tiles 1, 2, 3, 4, 6, 12 divide it
    assert "'layer1.0.conv1.weight'" in msg and "12×36" in msg and "1, 2, 3, 4, 6, 12" in msg
    # apply without validate still fails loudly, naming the layer
    with pytest.raises(ValueError, match="layer1.0.conv1.weight.*12×36"):
        TiledSVD(tile=8, rank=2).apply(weights, CTX)


def test_non_matrix_targets_are_reported():
    weights = {"bn.weight": randn(8)}
    for d in (SVD(rank=1), TiledSVD(tile=2, rank=1), Tucker2(rc=0.5)):
        (msg,) = d.validate(weights)
        assert "'bn.weight'" in msg and "remove it from the target layers" in msg
    assert Tucker2(rc=0.5).validate({"conv1d.weight": randn(3, 4, 3)})  # 3-D: not a 2-D conv


# --------------------------------------------------------------------------------------------
# SVD


def test_svd_is_the_best_rank_r_approximation():
    w = randn(6, 4, 3, 3)
    mat = w.reshape(6, -1)
    out = SVD(rank=2).apply({"w": w}, CTX)["w"]
    assert out.shape == w.shape
    assert torch.linalg.matrix_rank(out.reshape(6, -1)) == 2
    # Eckart–Young: the error is the norm of the discarded singular values.
    s = torch.linalg.svdvals(mat)
    assert math.isclose(torch.linalg.norm(out.reshape(6, -1) - mat), s[2:].norm(), rel_tol=1e-4)


@pytest.mark.parametrize("shape", [(3, 4, 3), (6, 4, 3, 3), (5, 7)])
def test_svd_full_rank_is_exact(shape):
    w = randn(*shape)
    m, n = shape[0], math.prod(shape[1:])
    torch.testing.assert_close(SVD(rank=min(m, n)).apply({"w": w}, CTX)["w"], w)
    torch.testing.assert_close(SVD(ratio=1.0).apply({"w": w}, CTX)["w"], w)


def test_svd_ratio_rank_and_storage():
    w = randn(10, 4, 3, 3)  # 10×36
    d = SVD(ratio=0.3)
    assert d.layer_rank(w) == 3  # ceil(0.3·10), not 4 from 3.0000000000000004
    assert d.stored_params("w", w) == 3 * (10 + 36)
    assert d.macs_fraction("w", w) == pytest.approx(3 * 46 / 360)
    assert SVD(ratio=0.01).layer_rank(w) == 1


def test_svd_batched_apply_equals_per_layer():
    weights = {f"l{i}": randn(8, 4, 3, 3, seed=i) for i in range(3)} | {"fc": randn(5, 9)}
    d = SVD(rank=3)
    out = d.apply(weights, CTX)
    assert list(out) == list(weights)
    for name, w in weights.items():
        torch.testing.assert_close(out[name], svd_approx(w, 3))
        torch.testing.assert_close(out[name], d.distort_tensor(name, w, CTX))


# --------------------------------------------------------------------------------------------
# Tiled SVD


def test_tiles_round_trip_and_layout():
    mat = torch.arange(4 * 6.0).reshape(4, 6)
    tiles = to_tiles(mat, 2)
    assert tiles.shape == (6, 2, 2)
    torch.testing.assert_close(tiles[1], mat[0:2, 2:4])  # row-major over the tile grid
    torch.testing.assert_close(tiles[3], mat[2:4, 0:2])
    torch.testing.assert_close(from_tiles(tiles, 4, 6), mat)


def test_every_tile_has_rank_at_most_r():
    w = randn(8, 4, 3, 3)  # lowered 8×36, 4×4 tiles: 2·9 tiles
    out = TiledSVD(tile=4, rank=2).apply({"w": w}, CTX)["w"]
    tiles = to_tiles(out.reshape(8, 36), 4)
    assert tiles.shape == (18, 4, 4)
    assert int(torch.linalg.matrix_rank(tiles).max()) <= 2
    assert int(torch.linalg.matrix_rank(to_tiles(w.reshape(8, 36), 4)).min()) == 4


@pytest.mark.parametrize(("shape", "tile"), [((4, 4, 3), 2), ((8, 4, 3, 3), 4), ((6, 12), 3)])
def test_tiled_svd_full_rank_is_exact(shape, tile):
    w = randn(*shape)
    torch.testing.assert_close(TiledSVD(tile=tile, rank=tile).apply({"w": w}, CTX)["w"], w)
    torch.testing.assert_close(tiled_svd_approx(w, tile, tile), w)


def test_batched_tiled_svd_equals_per_tile_loop():
    weights = {
        "a.weight": randn(8, 4, 3, 3, seed=1),
        "b.weight": randn(16, 8, 3, 3, seed=2),
        "c.weight": randn(8, 8, 1, 1, seed=3),
        "fc.weight": randn(4, 16, seed=4),
    }
    d = TiledSVD(tile=4, rank=2)
    out = d.apply(weights, CTX)
    for name, w in weights.items():
        ref = tiled_svd_approx_loop(w, 4, 2)
        torch.testing.assert_close(out[name], ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(d.distort_tensor(name, w, CTX), ref, atol=1e-5, rtol=1e-4)
    many = tiled_svd_approx_many(list(weights.values()), 4, 2)
    for got, name in zip(many, weights, strict=True):
        torch.testing.assert_close(got, out[name])


def test_tiled_svd_is_one_batched_decomposition(monkeypatch):
    calls = []
    real_eigh, real_svd = torch.linalg.eigh, torch.linalg.svd

    def spy(real):
        def fn(a, *args, **kwargs):
            calls.append(tuple(a.shape))
            return real(a, *args, **kwargs)

        return fn

    monkeypatch.setattr(torch.linalg, "eigh", spy(real_eigh))
    monkeypatch.setattr(torch.linalg, "svd", spy(real_svd))
    weights = {"a": randn(8, 4, 3, 3), "b": randn(16, 8, 3, 3), "c": randn(4, 8)}
    TiledSVD(tile=4, rank=1).apply(weights, CTX)
    assert calls == [(18 + 72 + 2, 4, 4)]


def test_tiled_svd_storage_counts():
    w = randn(64, 64, 3, 3)  # 64×576: 1·9 tiles of 64×64
    d = TiledSVD(tile=64, rank=16)
    assert d.stored_params("w", w) == 9 * 2 * 64 * 16
    assert w.numel() / d.stored_params("w", w) == 2.0  # the paper's 2× at r = 16
    assert TiledSVD(tile=8, rank=1).stored_params("w", w) == 8 * 72 * 2 * 8


# --------------------------------------------------------------------------------------------
# Tucker-2


def test_tucker2_ranks():
    assert tucker2_ranks((64, 32, 3, 3), 0.5) == (16, 32)
    assert tucker2_ranks((10, 10, 3, 3), 0.3) == (3, 3)  # float noise does not round up
    assert tucker2_ranks((10, 84), 0.5) == (10, 5)  # R_s capped by the rank of its unfolding


@pytest.mark.parametrize("shape", [(3, 4, 3, 3), (6, 5, 1, 1), (5, 7)])
def test_tucker2_full_rank_is_exact(shape):
    w = randn(*shape)
    torch.testing.assert_close(Tucker2(rc=1.0).apply({"w": w}, CTX)["w"], w, atol=1e-5, rtol=1e-4)


def test_tucker2_multilinear_ranks():
    w = randn(8, 6, 3, 3)
    out = Tucker2(rc=0.5).apply({"w": w}, CTX)["w"]
    assert torch.linalg.matrix_rank(out.reshape(8, -1)) == 4  # mode T
    assert torch.linalg.matrix_rank(out.transpose(0, 1).reshape(6, -1)) == 3  # mode S
    # HOSVD reconstruction is a projection: applying it twice changes nothing.
    again = Tucker2(rc=0.5).apply({"w": out}, CTX)["w"]
    torch.testing.assert_close(again, out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("shape", "rc"), [((4, 3, 3, 3), 0.5), ((6, 5, 3, 3), 0.6)])
def test_torch_hosvd_matches_tensorly_partial_tucker(shape, rc):
    w = randn(*shape, dtype=torch.float64)
    r_s, r_t = tucker2_ranks(shape, rc)
    core, p_s, p_t = tucker2_factors(w, r_s, r_t)
    tl.set_backend("numpy")
    (tl_core, (tl_t, tl_s)), _ = partial_tucker(
        w.numpy(), rank=[r_t, r_s], modes=[0, 1], n_iter_max=0, init="svd"
    )
    tl_rec = tl.tenalg.multi_mode_dot(tl_core, [tl_t, tl_s], modes=[0, 1])
    ours = tucker2_approx(w, r_s, r_t).numpy()
    np.testing.assert_allclose(ours, tl_rec, atol=1e-10)
    # Factors agree up to sign: compare the projectors P·Pᵀ instead.
    np.testing.assert_allclose((p_s @ p_s.T).numpy(), tl_s @ tl_s.T, atol=1e-10)
    np.testing.assert_allclose((p_t @ p_t.T).numpy(), tl_t @ tl_t.T, atol=1e-10)
    assert core.shape == (r_t, r_s, 3, 3) and tl_core.shape == (r_t, r_s, 3, 3)


def test_tucker2_batched_apply_equals_per_layer():
    weights = {f"l{i}": randn(8, 6, 3, 3, seed=i) for i in range(3)} | {"fc": randn(5, 9)}
    d = Tucker2(rc=0.5)
    out = d.apply(weights, CTX)
    for name, w in weights.items():
        torch.testing.assert_close(out[name], d.distort_tensor(name, w, CTX))


@pytest.mark.parametrize(("t", "s", "d", "rc"), [(12, 8, 3, 0.5), (16, 16, 3, 0.3), (6, 4, 5, 0.7)])
def test_tucker2_compression_ratio_equals_exported_params(t, s, d, rc):
    conv = nn.Conv2d(s, t, d, padding=1, bias=False)
    model = nn.Sequential(conv)
    dist = Tucker2(rc=rc)
    r_s, r_t = math.ceil(rc * s - 1e-9), math.ceil(rc * t - 1e-9)
    formula = d * d * s * t / (s * r_s + d * d * r_s * r_t + t * r_t)
    exported = export(model, dist, ["0.weight"])
    assert count_params(model) / count_params(exported) == pytest.approx(formula)
    assert dist.stored_params("0.weight", conv.weight) == count_params(exported)


def test_half_precision_weights_keep_their_dtype():
    w = randn(8, 4, 3, 3).to(torch.bfloat16)
    for d in (SVD(rank=2), TiledSVD(tile=4, rank=2), Tucker2(rc=0.5)):
        out = d.apply({"w": w}, CTX)["w"]
        assert out.dtype == torch.bfloat16 and out.shape == w.shape
