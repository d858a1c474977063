"""`python -m benchmarks --mnist`: samples/s of each model against its twin on torch.nn layers."""
from __future__ import annotations

import json
import platform

import pytest

import torch

from pyneuro import cli
from pyneuro import nn as pnn
from pyneuro.bench.mnist import _flushing_subnormals, stock_twin
from pyneuro.data import to_view
from pyneuro.models import registry


def test_stock_twins_compute_the_same_function_on_torch_nn_layers():
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    for name in ("lstm", "gru", "rnn", "transformer", "cnn"):
        torch.manual_seed(0)
        spec = registry.get(name)
        model = spec.build().eval()
        twin, notes = stock_twin(model)
        twin.eval()
        kinds = {type(m).__module__.split(".")[0] for m in twin.modules() if hasattr(m, "weight_hh_l0")
                 or type(m).__name__ in ("MultiheadAttention", "TransformerEncoderLayer", "BatchNorm2d",
                                         "BatchNormReLU2d")}
        assert kinds == {"torch"}, (name, kinds)  # every pyneuro layer swapped
        assert notes == []
        if name == "transformer":  # the whole encoder layer is torch.nn's, as a user would write it
            assert all(type(layer) is torch.nn.TransformerEncoderLayer for layer in twin.layers)
        x = to_view(images, spec.view)
        if name == "cnn":  # fused BN + ReLU (+ pool) -> torch.nn's BatchNorm2d, ReLU, MaxPool2d
            assert not any(isinstance(m, pnn.BatchNormReLU2d) for m in twin.modules())
            assert sum(type(m) is torch.nn.BatchNorm2d for m in twin.modules()) == 4
            assert sum(type(m) is torch.nn.MaxPool2d for m in twin.modules()) == 2
            model.train(), twin.train()  # batch statistics and running-statistics updates too
            outputs = []
            for m in (twin, model):
                torch.manual_seed(1)  # the same dropout masks
                outputs.append(m(x))
            torch.testing.assert_close(*outputs, rtol=1e-4, atol=1e-5, msg=name)
            model.eval()
            twin.eval()
        with torch.no_grad():
            torch.testing.assert_close(twin(x), model(x), rtol=1e-4, atol=1e-5, msg=name)


def test_bench_mnist_reports_samples_per_second(tmp_path, capsys):
    out = tmp_path / "mnist.json"
    assert cli.main(["bench", "--mnist", "--models", "cnn,mamba", "--steps", "1", "--batch-size", "4",
                     "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["cnn", "mamba"]
    for r in rows:
        assert r["pyneuro_samples_per_s"] > 0 and r["torch_nn_samples_per_s"] > 0
        # Against the faster torch.nn variant: as it comes, or with subnormals flushed (CPU).
        best = max(r["torch_nn_samples_per_s"], r.get("torch_nn_flush_denormal_samples_per_s", 0.0))
        assert r["speedup"] == r["pyneuro_samples_per_s"] / best
        if platform.machine() in ("x86_64", "AMD64"):
            assert r["torch_nn_flush_denormal_samples_per_s"] > 0
    assert not _flushing_subnormals()  # the caller's mode (off) is back
    assert any("reference" in n for n in rows[1]["notes"])  # Mamba has no torch.nn layer: said so
    assert "samples/s" in capsys.readouterr().out


def test_bench_mnist_view_reads_pixels_and_refuses_fixed_view_models(tmp_path, capsys):
    """--view pixels builds the recurrent models pixel by pixel (784 steps of one input); a model
    that reads MNIST one way only is refused by name."""
    out = tmp_path / "pixels.json"
    assert cli.main(["bench", "--mnist", "--models", "gru", "--view", "pixels", "--steps", "1", "--batch-size", "2",
                     "--device", "cpu", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["model"] == "gru" and row["view"] == "pixels"
    assert "view pixels" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--mnist", "--models", "cnn", "--view", "pixels", "--device", "cpu"])
    assert "cnn" in capsys.readouterr().err


@pytest.mark.skipif(not torch.set_flush_denormal(False) and platform.machine() not in ("x86_64", "AMD64"),
                    reason="this CPU cannot flush subnormals")
def test_bench_keeps_a_caller_that_flushes_flushing(capsys):
    from pyneuro.bench.mnist import run

    torch.set_flush_denormal(True)
    try:
        run(["rnn"], torch.device("cpu"), batch_size=2, steps=1)
        assert _flushing_subnormals()
    finally:
        torch.set_flush_denormal(False)
    assert not _flushing_subnormals()


def test_bench_mnist_times_the_transformer_with_its_last_layer_on_every_token_too(tmp_path, capsys):
    """pyneuro's transformer runs its last layer on the class token only, which its torch.nn twin
    cannot: the row also times the pyneuro model over every token, in the same rounds, and prints
    that speedup next to the headline one."""
    out = tmp_path / "transformer.json"
    assert cli.main(["bench", "--mnist", "--models", "transformer", "--steps", "1", "--batch-size", "4",
                     "--device", "cpu", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    best = max(row["torch_nn_samples_per_s"], row.get("torch_nn_flush_denormal_samples_per_s", 0.0))
    assert row["pyneuro_all_rows_samples_per_s"] > 0
    assert row["speedup_all_rows"] == row["pyneuro_all_rows_samples_per_s"] / best
    assert "last layer on every token" in capsys.readouterr().out
