"""The training loop's contracts, on a tiny random data set: checkpoints inside an epoch, validation
only where asked, no host sync per step, signals that only set a flag, the model's own view."""
from __future__ import annotations

import io
import json
import os
import signal
import sys

import pytest
import torch

from pyneuro.models import registry
from pyneuro.train import loop
from pyneuro.train.config import resolve

STEPS_PER_EPOCH = 250 // 32


@pytest.fixture(autouse=True)
def _no_plots_and_threads(monkeypatch):
    monkeypatch.setattr("pyneuro.viz.plots.run_plots", lambda *a, **k: [])
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny(data, *extra) -> dict:
    return resolve("cnn", None, ["model.channels=[4,8]", "model.convs_per_block=1", "model.hidden=8",
                                 "train.batch_size=32", "train.epochs=2", "train.threads=1", 'train.device="cpu"',
                                 f"train.data_dir={json.dumps(str(data))}", *extra])


def test_checkpoint_every_saves_inside_the_epoch(tiny_data, tmp_path, monkeypatch):
    saved = []
    real_save = loop.save_checkpoint

    def spy(state, path):
        saved.append((state["epoch"], state["batch_in_epoch"], state["step"]))
        real_save(state, path)

    monkeypatch.setattr(loop, "save_checkpoint", spy)
    loop.train(tiny(tiny_data, "train.checkpoint_every=3"), tmp_path, stream=io.StringIO())
    # Steps 3 and 6 inside epoch 1, 9 and 12 inside epoch 2 (7 steps each), and both epoch ends.
    assert saved == [(0, 3, 3), (0, 6, 6), (1, 0, 7), (1, 2, 9), (1, 5, 12), (2, 0, 14)]


def test_validation_only_where_asked(tiny_data, tmp_path):
    def val_epochs(run, every, epochs):
        loop.train(tiny(tiny_data, f"train.eval_every={every}", f"train.epochs={epochs}"), run, stream=io.StringIO())
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
        return [r["epoch"] for r in records if "val_acc" in r]

    assert val_epochs(tmp_path / "a", 0, 2) == []
    assert val_epochs(tmp_path / "b", 2, 3) == [2, 3]  # every 2nd epoch, and the last


def test_no_host_sync_per_step(tiny_data, tmp_path, monkeypatch):
    """Reading a number off a tensor (.item()) waits for the GPU; the old loop did it twice a step.
    Counted: the calls made by pyneuro's code (torch's optimizers read their CPU-side step counts)."""
    calls = {"n": 0}
    real_item = torch.Tensor.item

    def counting_item(self):
        if "pyneuro" in sys._getframe(1).f_code.co_filename:
            calls["n"] += 1
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    settings = tiny(tiny_data, "train.epochs=3", "train.eval_every=0", "train.log_every=1000")
    real_evaluate_run = loop.evaluate_run
    monkeypatch.setattr(loop, "evaluate_run", lambda *a, **k: (calls.update(training=calls["n"]),
                                                              real_evaluate_run(*a, **k))[1])
    loop.train(settings, tmp_path, stream=io.StringIO())
    # Per epoch, not per step: the progress bar's last line (2), the epoch's record (3), its
    # checkpoint (3); two a step would be 42.
    assert calls["training"] <= 3 * 8 < 3 * STEPS_PER_EPOCH * 2


def test_a_signal_only_sets_a_flag_and_a_second_one_interrupts_at_once():
    with loop.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # no exception: the loop decides when to stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is not stop._handle  # the previous handlers are back


def test_the_model_s_view_hyper_parameter_wins_over_the_registry_s():
    spec = registry.get("lstm")  # reads rows by default
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    assert loop.model_input(spec, {}, images).shape == (3, 28, 28)
    assert loop.model_input(spec, {"view": "pixels"}, images).shape == (3, 784, 1)
    assert loop.input_view(spec, {"view": "patches"}) == "patches"


def test_channels_last_trains_the_same_function(tiny_data, tmp_path):
    a = loop.train(tiny(tiny_data), tmp_path / "a", stream=io.StringIO())
    b = loop.train(tiny(tiny_data, "train.channels_last=true"), tmp_path / "b", stream=io.StringIO())
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model_state"]
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model_state"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-3, atol=1e-4, msg=key)
    assert abs(a["test_acc"] - b["test_acc"]) <= 2 / 60


def test_a_model_with_a_view_hyper_parameter_trains_and_evaluates_on_that_view(tiny_data, tmp_path, monkeypatch):
    shapes = set()
    real = loop.model_input

    def spy(spec, hyper, images, channels_last=False):
        x = real(spec, hyper, images, channels_last)
        shapes.add(tuple(x.shape[1:]))
        return x

    monkeypatch.setattr(loop, "model_input", spy)
    settings = resolve("lstm", None, ['model.view="pixels"', "model.hidden_size=8", "train.batch_size=32",
                                      "train.epochs=1", "train.train_subset=64", "train.threads=1",
                                      'train.device="cpu"', f"train.data_dir={json.dumps(str(tiny_data))}"])
    summary = loop.train(settings, tmp_path, stream=io.StringIO())
    assert shapes == {(784, 1)}  # the probe, the training steps, validation and test: all pixels
    assert summary["settings"]["hyper"]["view"] == "pixels"


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tiny_data, tmp_path, monkeypatch):
    """Settings added later (here the rotation/zoom augmentation and the malloc setting) are absent
    from older checkpoints: resuming gives them their defaults, which do what that version did, and
    ends where the uninterrupted run ends."""
    new_keys = ("augment_rotate", "augment_scale", "retain_freed_memory")
    settings = tiny(tiny_data, "train.augment_shift=1")
    real_save, kept = loop.save_checkpoint, tmp_path / "old" / "last.pt"

    def keep_the_first_epoch_end(state, path):
        real_save(state, path)
        if state["epoch"] == 1 and state["batch_in_epoch"] == 0:
            old = {**state, "settings": {**state["settings"], "train": {
                k: v for k, v in state["settings"]["train"].items() if k not in new_keys}}}
            kept.parent.mkdir()
            real_save(old, kept)

    monkeypatch.setattr(loop, "save_checkpoint", keep_the_first_epoch_end)
    loop.train(settings, tmp_path / "full", stream=io.StringIO())
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert not set(new_keys) & set(torch.load(kept, weights_only=True)["settings"]["train"])
    loop.train(None, tmp_path / "old", resume=True, stream=io.StringIO())
    resumed = torch.load(kept, weights_only=True)
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    assert {k: resumed["settings"]["train"][k] for k in new_keys} == {
        "augment_rotate": 0.0, "augment_scale": 0.0, "retain_freed_memory": True}
    assert all(torch.equal(resumed["model_state"][k], full["model_state"][k]) for k in full["model_state"])
