"""Export of distorted models in compressed form: equivalence, counts, save/load round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import trainers.export
from trainers.counting import count_params, layer_macs
from trainers.data import DataInfo
from trainers.distortions import REGISTRY, Distortion, DistortionContext, make_distortion
from trainers.distortions.layers import TiledLowRankConv2d, TiledLowRankLinear
from trainers.export import compression_report, export
from trainers.models import VGG, build_model
from trainers.serialize import load_exported, save_exported, structure_spec

CTX = DistortionContext(step=10, total_steps=100, event=0, num_events=10, seed=0)
ROOT = Path(__file__).resolve().parents[1]

# (model, input shape, builder); VGG-style: the real VGG class with a short config.
MODELS = {
    "lenet5": ((1, 28, 28), lambda: build_model("lenet5", DataInfo((1, 28, 28), 10))),
    "resnet20": ((3, 32, 32), lambda: build_model("resnet20", DataInfo((3, 32, 32), 10))),
    "vgg": ((3, 16, 16), lambda: VGG([16, 16, "M", 32, 32, "M"], 3, 10)),
}
# Knobs per method and model: the tiles must divide every target's lowered matrix, so the
# tiled runs leave out the 10-class classifiers of ResNet-20 and the VGG (10×64, 10×32).
METHODS = {
    "svd": ({"rank": 5}, {"rank": 5}, {"ratio": 0.4}),
    "tiled_svd": ({"tile": 10, "rank": 3}, {"tile": 16, "rank": 4}, {"tile": 8, "rank": 3}),
    "tucker2": ({"rc": 0.5}, {"rc": 0.4}, {"rc": 0.6}),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest, and it keeps OpenMP from spinning against other
    processes on a busy 2-CPU machine (a 10-50× slowdown of small SVDs otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[name][1]().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    for mod in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=gen))
            mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=gen))
            mod.weight.data.copy_(1 + 0.1 * torch.randn(mod.num_features, generator=gen))
            mod.bias.data.copy_(0.1 * torch.randn(mod.num_features, generator=gen))
    return model


def target_names(model: nn.Module, method: str) -> list[str]:
    """Every conv/linear weight but the first conv (and the classifier for tiled SVD)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear) and mod_name != convs[0]:
            if method == "tiled_svd" and isinstance(mod, nn.Linear) and mod.out_features == 10:
                continue
            names.append(f"{mod_name}.weight")
    return names


def distort(model: nn.Module, dist: Distortion, targets: list[str]) -> None:
    params = dict(model.named_parameters())
    weights = {n: params[n].detach() for n in targets}
    assert dist.validate(weights) == []
    with torch.no_grad():
        for n, w in dist.apply(weights, CTX).items():
            params[n].copy_(w)


def distorted_and_exported(model_name: str, method: str):
    model = build(model_name)
    knobs = METHODS[method][list(MODELS).index(model_name)]
    dist = make_distortion(method, **knobs)
    targets = target_names(model, method)
    distort(model, dist, targets)
    return model, dist, targets, export(model, dist, targets).eval()


def batch(model_name: str, n: int = 3) -> torch.Tensor:
    return torch.randn(n, *MODELS[model_name][0], generator=torch.Generator().manual_seed(7))


def assert_same_outputs(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = a.abs().max().item()
    torch.testing.assert_close(b, a, atol=1e-4 * scale, rtol=0)


CASES = [(m, d) for m in MODELS for d in METHODS]


@pytest.mark.parametrize(("model_name", "method"), CASES)
def test_exported_model_equals_distorted_model(model_name, method):
    model, dist, targets, exported = distorted_and_exported(model_name, method)
    x = batch(model_name)
    with torch.no_grad():
        assert_same_outputs(model(x), exported(x))

    # Parameters: the dense target weights are replaced by exactly their stored counts.
    params = dict(model.named_parameters())
    dense = sum(params[n].numel() for n in targets)
    stored = sum(dist.stored_params(n, params[n]) for n in targets)
    assert count_params(exported) == count_params(model) - dense + stored
    report = compression_report(model, exported, MODELS[model_name][0])
    assert report["params_after"] == count_params(exported)
    assert report["compression_ratio"] == pytest.approx(
        count_params(model) / count_params(exported)
    )
    assert report["macs_after"] < report["macs_before"]

    # SVD and tiled SVD run every factor at the output resolution: MACs scale exactly like
    # storage, whatever the stride (Tucker-2's first 1×1 conv runs at the input resolution).
    if method != "tucker2":
        per_layer = layer_macs(model, MODELS[model_name][0])
        saved = sum(
            per_layer[n.rpartition(".")[0]] * (1 - dist.macs_fraction(n, params[n]))
            for n in targets
        )
        assert report["macs_after"] == pytest.approx(report["macs_before"] - saved)

    # The original model is untouched and keeps its dense layers.
    for n in targets:
        assert isinstance(model.get_submodule(n.rpartition(".")[0]), nn.Conv2d | nn.Linear)


def test_exported_structure_of_each_method():
    model = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(48, 6))
    targets = ["0.weight", "2.weight"]
    svd = export(model, make_distortion("svd", rank=3), targets)
    conv_a, conv_b = svd[0]
    assert (conv_a.in_channels, conv_a.out_channels, conv_a.kernel_size) == (8, 3, (3, 3))
    assert (conv_a.stride, conv_a.padding, conv_a.bias) == ((2, 2), (1, 1), None)
    assert (conv_b.out_channels, conv_b.kernel_size, conv_b.bias is not None) == (12, (1, 1), True)
    assert [type(m) for m in svd[2]] == [nn.Linear, nn.Linear] and svd[2][0].bias is None

    tucker = export(model, make_distortion("tucker2", rc=0.5), targets)
    first, core, last = tucker[0]
    assert (first.kernel_size, first.out_channels, first.bias) == ((1, 1), 4, None)
    assert (core.kernel_size, core.stride, core.padding, core.out_channels) == (
        (3, 3), (2, 2), (1, 1), 6,
    )  # fmt: skip
    assert (last.kernel_size, last.out_channels, last.bias is not None) == ((1, 1), 12, True)
    # Linear 48→6 as a 1×1 kernel: R_t = 3; R_s = ceil(0.5·48) = 24 is capped at 6, the rank
    # of the mode-S unfolding (48×6).
    assert [m.out_features for m in tucker[2]] == [6, 3, 6]

    tiled = export(model, make_distortion("tiled_svd", tile=6, rank=2), targets)
    assert isinstance(tiled[0], TiledLowRankConv2d) and isinstance(tiled[2], TiledLowRankLinear)
    assert tiled[0].mat.u.shape == (2, 12, 6, 2) and tiled[0].mat.v.shape == (2, 12, 2, 6)


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        {"stride": 2, "padding": 1},
        {"padding": 2, "dilation": 2},
        {"kernel_size": (3, 1), "padding": (1, 0), "stride": (1, 2)},
        {"padding": 1, "padding_mode": "reflect"},
        {"padding": "same"},
        {"padding": "valid", "bias": False},
    ],
)
def test_tiled_conv_matches_dense_conv(conv_kwargs):
    kwargs = {"kernel_size": 3, **conv_kwargs}
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, **kwargs)
    dist = make_distortion("tiled_svd", tile=2, rank=2)  # full rank: the dense conv exactly
    tiled = export(nn.Sequential(conv), dist, ["0.weight"])[0]
    torch.testing.assert_close(tiled.mat.dense_weight(), conv.weight.detach().reshape(6, -1))
    x = torch.randn(2, 4, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(tiled(x), conv(x), atol=1e-5, rtol=1e-4)


def test_tiled_linear_on_extra_leading_dims():
    lin = nn.Linear(8, 4)
    tiled = export(nn.Sequential(lin), make_distortion("tiled_svd", tile=4, rank=4), ["0.weight"])
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(tiled(x), lin(x), atol=1e-5, rtol=1e-4)


def test_structure_keeping_methods_report_nonzeros():
    model = build("lenet5")
    targets = target_names(model, "prune")
    dist = make_distortion("prune", rate=0.75)
    distort(model, dist, targets)
    exported = export(model, dist, targets)
    assert [type(m) for m in exported.modules()] == [type(m) for m in model.modules()]
    report = compression_report(build("lenet5"), exported, (1, 28, 28))
    assert report["params_after"] == report["params_before"]
    pruned = sum(model.get_parameter(n).numel() for n in targets) * 0.75
    assert report["nnz_before"] - report["nnz_after"] == pytest.approx(pruned, abs=len(targets))
    assert report["nnz_ratio"] > 1.0


def test_export_refuses_what_it_cannot_restructure():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.LSTM(4, 4))
    with pytest.raises(ValueError, match=r"'0.weight'.*groups=1"):
        export(model, make_distortion("svd", rank=1), ["0.weight"])
    with pytest.raises(ValueError, match=r"'1.weight_ih_l0'.*exclude it"):
        export(model, make_distortion("tucker2", rc=0.5), ["1.weight_ih_l0"])
    with pytest.raises(ValueError, match=r"'0.weight'.*tiles do not divide"):
        dist = make_distortion("tiled_svd", tile=4, rank=1)
        export(nn.Sequential(nn.Linear(6, 4)), dist, ["0.weight"])


def test_distortion_without_export_layer_keeps_the_structure():
    """The default hook keeps every layer, whatever it is (an LSTM and a grouped conv too)."""

    class Fancy(Distortion):
        name = "fancy"

        def distort_tensor(self, name, w, ctx):
            return 0.5 * w

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.LSTM(4, 4))
    exported = export(model, Fancy(), ["0.weight", "1.weight_ih_l0"])
    assert exported is not model
    assert [type(m) for m in exported.modules()] == [type(m) for m in model.modules()]
    before, after = model.state_dict(), exported.state_dict()
    assert list(before) == list(after)
    for k, w in before.items():
        assert torch.equal(after[k], w) and after[k].data_ptr() != w.data_ptr()


def test_new_distortion_is_exported_through_its_own_hook_alone(tmp_path):
    """The extension point: a method defined here, in no registry and unknown to
    trainers.export, gets its compressed structure from its own export_layer."""

    class Wrapped(Distortion):
        name = "wrapped_linear"

        def distort_tensor(self, name, w, ctx):
            return w.clone()

        def export_layer(self, module, weight):
            assert not torch.is_grad_enabled()
            if not isinstance(module, nn.Linear):
                raise ValueError(f"a {type(module).__name__}: wrapped_linear needs an nn.Linear")
            scale = nn.Linear(module.in_features, module.in_features, bias=False)
            scale.weight.data.copy_(torch.eye(module.in_features))
            return nn.Sequential(scale, module)

    assert Wrapped.name not in REGISTRY
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)]
    model = nn.Sequential(*layers).double().train()
    exported = export(model, Wrapped(), ["2.weight", "4.weight"])
    for i in (2, 4):
        assert isinstance(model[i], nn.Linear)  # the original is untouched
        wrapped = exported[i]
        assert isinstance(wrapped, nn.Sequential) and isinstance(wrapped[1], nn.Linear)
        assert wrapped[0].weight.dtype == torch.float64 and wrapped.training
        torch.testing.assert_close(wrapped[1].weight, model[i].weight, atol=0, rtol=0)
    assert isinstance(exported[0], nn.Conv2d)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x))
    exported = exported.float().eval()  # the loader builds float32 modules
    save_exported(exported, tmp_path / "w.pt")
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "w.pt")(x.float()), exported(x.float()))
    with pytest.raises(ValueError, match=r"export: target '0.weight': a Conv2d: wrapped_linear"):
        export(model, Wrapped(), ["0.weight"])


def test_export_names_no_compression_method():
    """export.py is generic: no method name, no per-method dispatch."""
    source = Path(trainers.export.__file__).read_text()
    for name in REGISTRY:
        assert f'"{name}"' not in source and f"'{name}'" not in source, name


def test_save_and_load_are_re_exported_from_export():
    import trainers.serialize

    assert trainers.export.save_exported is trainers.serialize.save_exported
    assert trainers.export.load_exported is trainers.serialize.load_exported


@pytest.mark.parametrize(("model_name", "method"), CASES)
def test_save_load_round_trip(model_name, method, tmp_path):
    _, _, _, exported = distorted_and_exported(model_name, method)
    path = tmp_path / "model.pt"
    save_exported(exported, path)
    loaded = load_exported(path)
    assert isinstance(loaded, fx.GraphModule) and not loaded.training
    x = batch(model_name)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), exported(x), atol=0, rtol=0)
    assert count_params(loaded) == count_params(exported)
    # The loaded model counts like the exported one (its leaves are the same module types).
    shape = MODELS[model_name][0]
    assert compression_report(exported, loaded, shape)["macs_ratio"] == 1.0
    spec = torch.load(path, weights_only=True)["structure"]
    json.dumps(spec)
    for mod in spec["modules"].values():
        assert mod["type"].startswith(("torch.nn:", "compsweep:"))


def test_loading_needs_neither_trainer_nor_model_class(tmp_path):
    _, _, _, exported = distorted_and_exported("resnet20", "tiled_svd")
    save_exported(exported, tmp_path / "m.pt")
    x = batch("resnet20")
    with torch.no_grad():
        torch.save({"x": x, "y": exported(x)}, tmp_path / "io.pt")
    code = f"""
import sys, torch
from trainers.export import load_exported
m = load_exported({str(tmp_path / "m.pt")!r})
io = torch.load({str(tmp_path / "io.pt")!r})
with torch.no_grad():
    torch.testing.assert_close(m(io["x"]), io["y"], atol=1e-6, rtol=1e-5)
bad = [n for n in sys.modules if n in ("trainers.models", "trainers.loop", "trainers.data")]
assert not bad, bad
print("ok")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_graph_arguments_survive_the_round_trip(tmp_path):
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.scale = nn.Parameter(torch.tensor(2.0))
            self.register_buffer("shift", torch.ones(4))
            self.register_buffer("offset", torch.full((4, 1, 1), 3.0), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)[:, :, ::2, 1:]
            y = F.pad(y, (1, 0, 0, 1), value=0.5) * self.scale
            y = (
                y
                + self.shift[None, :, None, None]
                + torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None]
            )
            y = y - self.offset
            return torch.cat([y.flatten(1), y.mean(dim=(2, 3))], dim=1).to(torch.float32)

    model = Odd().eval()
    spec, extra = structure_spec(fx.symbolic_trace(model))
    # fx stores a literal tensor as a buffer; a non-persistent buffer is saved on the side.
    assert spec["attributes"]["_tensor_constant0"]["kind"] == "buffer"
    assert spec["attributes"]["offset"]["kind"] == "nonpersistent" and list(extra) == ["offset"]
    save_exported(model, tmp_path / "odd.pt")
    loaded = load_exported(tmp_path / "odd.pt")
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
