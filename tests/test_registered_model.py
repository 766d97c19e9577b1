"""Models handed to users take the dataset's raw samples, and pruned ones are stored sparse:
the adapter and the packing on their own, then a registered model loaded from a real MLflow
server and fed raw scikit-learn digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch import fx, nn

from trainers.data import load_dataset
from trainers.inputs import RawInputAdapter, to_raw
from trainers.packing import SparseConv2d, SparseLinear, pack_sparse, state_bytes


def _raw_digits_test() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as users have them (64 values 0–16), in the trainer's test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    _, xte, _, yte = train_test_split(x, y, test_size=360, stratify=y, random_state=0)
    return xte, yte


def test_raw_input_adapter_reproduces_the_trainers_preprocessing_exactly():
    data = load_dataset("digits", batch_size=32, test_batch_size=400)
    x, y = next(iter(data.test.epoch(0, 0)))
    raw, labels = _raw_digits_test()
    adapter = RawInputAdapter(data.info.raw, data.info.input_shape)
    assert torch.equal(adapter(torch.from_numpy(raw)), x) and np.array_equal(labels, y.numpy())
    assert torch.equal(adapter(torch.from_numpy(raw.astype(np.float32))), x)  # any numeric dtype
    back = to_raw(x, data.info.raw)
    assert back.dtype == np.float64 and np.array_equal(back, raw)


def _pruned(layer: nn.Module, rate: float) -> nn.Module:
    with torch.no_grad():
        w = layer.weight
        w.mul_(torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) >= rate)
    return layer


@pytest.mark.parametrize(
    "layer,shape",
    [(nn.Linear(30, 20), (4, 30)), (nn.Conv2d(6, 8, 3, stride=2, padding=1), (2, 6, 9, 9)),
     (nn.Conv2d(6, 8, (1, 3), padding=(0, 2), dilation=2, groups=2, bias=False), (2, 6, 7, 7))],
)  # fmt: skip
def test_sparse_packing_is_exact_and_smaller(layer, shape):
    torch.manual_seed(0)
    model = nn.Sequential(_pruned(layer, 0.8), nn.ReLU())
    packed = pack_sparse(model)
    assert isinstance(packed[0], SparseLinear | SparseConv2d) and model[0] is layer  # a copy
    x = torch.randn(shape)
    assert torch.equal(packed(x), model(x))
    assert torch.equal(fx.symbolic_trace(packed)(x), model(x))  # traces into plain torch
    nnz = int(torch.count_nonzero(layer.weight))
    n = layer.weight.numel()
    bias = 0 if layer.bias is None else layer.bias.numel() * 4
    assert state_bytes(packed) == (n + 7) // 8 + 4 * nnz + 8 + bias  # mask, values, shifts
    assert state_bytes(packed) < state_bytes(model)


def test_dense_layers_are_not_packed():
    model = nn.Sequential(_pruned(nn.Linear(40, 40), 0.01), nn.Linear(4, 4))
    packed = pack_sparse(model)
    assert [type(m) for m in packed] == [nn.Linear, nn.Linear]


@pytest.mark.integration
def test_registered_model_predicts_raw_digits_at_its_registered_accuracy(
    mlflow_server, tmp_path, monkeypatch
):
    """The final training registers the pruned model; loaded as a PyTorch model and as a
    pyfunc, it classifies raw digits (0–16) with exactly the test accuracy it was registered
    with, needs no compsweep code, carries a signature and an input example, and is stored
    sparse with honest, self-explaining sizes."""
    import mlflow
    import mlflow.pyfunc
    import mlflow.pytorch
    from mlflow import MlflowClient

    from sweeps.final import train_final

    config = {
        "data": {"name": "digits", "batch_size": 32, "val_fraction": 0},
        "model": {"name": "small_cnn"},
        "optim": {"optimizer": "sgd", "lr": 0.05},
        "compression": {"method": "prune", "pnr": 10, "params": {"rate": 0.8}},
        "run": {"steps": 90, "device": "cpu", "threads": 1},
    }
    path = tmp_path / "digits_prune.yaml"
    path.write_text(yaml.safe_dump(config))
    out = train_final(str(path), tracking_uri=mlflow_server.uri, register="digits-raw")

    client = MlflowClient(mlflow_server.uri)
    version = client.get_model_version("digits-raw", out["model_version"])
    tags = version.tags
    accuracy = float(tags["test_accuracy"])
    assert accuracy > 0.5  # trained: well above chance, so equality below means something
    assert "compression_ratio_weights" in version.description
    assert "exported_compression_ratio" not in tags and "compression_ratio" not in tags
    weights_ratio = float(tags["weights_dense"]) / float(tags["weights_kept"])
    assert float(tags["compression_ratio_weights"]) == pytest.approx(weights_ratio)
    bytes_ratio = float(tags["bytes_dense"]) / float(tags["bytes_stored"])
    assert float(tags["compression_ratio_bytes"]) == pytest.approx(bytes_ratio)
    assert bytes_ratio > 1.5  # stored sparse (dense storage would give 1.0)
    assert "0-16" in tags["input_format"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    uri = f"models:/digits-raw/{out['model_version']}"
    raw, labels = _raw_digits_test()
    model = mlflow.pytorch.load_model(uri)
    assert all(not type(m).__module__.startswith(("trainers", "sweeps")) for m in model.modules())
    with torch.no_grad():
        predicted = model(torch.from_numpy(raw)).argmax(1).numpy()
    assert (predicted == labels).mean() == pytest.approx(accuracy, abs=1e-9)
    # its tensors are what the tags say is stored
    assert state_bytes(model) == float(tags["bytes_stored"])

    pyfunc = mlflow.pyfunc.load_model(uri)
    logits = np.asarray(pyfunc.predict(raw))
    assert (logits.argmax(1) == labels).mean() == pytest.approx(accuracy, abs=1e-9)
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None and info.saved_input_example_info is not None
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 64]


def test_a_trials_compressed_model_artifact_takes_raw_digits(tiny_config, tmp_path):
    from sweeps.trial import save_compressed_model
    from trainers.loop import Trainer
    from trainers.serialize import load_exported

    cfg = tiny_config(data={"name": "digits", "batch_size": 32, "options": {}}, run={"steps": 30})
    trainer = Trainer(cfg)
    trainer.fit()
    save_compressed_model(trainer, tmp_path / "compressed_model.pt")
    model = load_exported(tmp_path / "compressed_model.pt")
    raw, labels = _raw_digits_test()
    x, _ = next(iter(trainer.data.test.epoch(0, 0)))
    with torch.no_grad():
        trained = trainer.model.eval()(x).argmax(1)
        served = model(torch.from_numpy(raw)).argmax(1)
    assert torch.equal(served, trained)  # the same predictions, from pixel values 0-16
    assert float((served == torch.from_numpy(labels)).float().mean()) > 0.5


@pytest.mark.parametrize(
    "name",
    ["probe-div", "digits-prune-demo", "probe-2", "lenet-300-100", "run-20261202", "a_b.c", "x"],
)
def test_the_registered_name_and_the_final_experiment_use_the_sweep_name(name):
    """A model from a sweep registers as ``<sweep name>-<method>``, whatever dashes and digits
    the name holds; the final experiment falls back to the same name."""
    from types import SimpleNamespace

    from sweeps.final import final_experiment, model_name
    from sweeps.records import new_sweep_id, sweep_name

    sweep_id = new_sweep_id(name)
    assert sweep_name(sweep_id) == name
    cfg = SimpleNamespace(compression=SimpleNamespace(method="prune"), model=SimpleNamespace(name="small_cnn"))  # fmt: skip
    prov = {"sweep_id": sweep_id, "experiment_id": "1"}
    assert model_name(prov, cfg) == f"{name}-prune"

    class GoneExperiment:
        def get_experiment(self, experiment_id):
            raise LookupError(experiment_id)

    assert final_experiment(GoneExperiment(), prov) == f"{name}-final"
    assert model_name(None, cfg) == "small_cnn-prune"


def test_an_id_not_made_by_compsweep_is_its_own_name():
    from sweeps.records import sweep_name

    assert sweep_name("probe-div-20261202-101500-ab12") == "probe-div"
    assert sweep_name("probe-div-20261202") == "probe-div-20261202"
    assert sweep_name("my-sweep") == "my-sweep"
