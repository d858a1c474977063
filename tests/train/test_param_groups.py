"""The optimiser's parameter groups: weight decay by kind, and the per-parameter ``_optim`` hint."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pyneuro.train.loop import fused_update, lr_factor, make_optimizer, param_groups

TRAIN = {"lr": 4e-3, "weight_decay": 0.05, "optimizer": "adamw", "momentum": 0.9}


def _model():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    model.slow = nn.Parameter(torch.ones(5))
    model.slow._optim = {"lr": 1e-3, "weight_decay": 0.0}
    model.slow_matrix = nn.Parameter(torch.ones(2, 2))
    model.slow_matrix._optim = {"lr": 1e-3}  # no weight_decay given: a matrix keeps the usual one
    model.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    model.frozen._optim = {"lr": 1.0}
    return model


def _group_of(optimizer, param):
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


def test_hinted_parameters_get_their_own_lr_and_decay_and_the_rest_keep_the_usual_rule():
    model = _model()
    opt = make_optimizer(model, TRAIN)
    assert _group_of(opt, model[0].weight)["weight_decay"] == 0.05 and _group_of(opt, model[0].weight)["lr"] == 4e-3
    for p in (model[0].bias, model[1].weight, model[1].bias):
        assert _group_of(opt, p)["weight_decay"] == 0.0 and _group_of(opt, p)["lr"] == 4e-3
    assert (_group_of(opt, model.slow)["lr"], _group_of(opt, model.slow)["weight_decay"]) == (1e-3, 0.0)
    assert (_group_of(opt, model.slow_matrix)["lr"], _group_of(opt, model.slow_matrix)["weight_decay"]) == (1e-3, 0.05)
    assert not any(p is model.frozen for g in opt.param_groups for p in g["params"])
    # every trainable parameter exactly once
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_equal_hints_share_one_group_and_models_without_hints_keep_two_groups():
    model = _model()
    model.slow2 = nn.Parameter(torch.ones(3))
    model.slow2._optim = {"weight_decay": 0.0, "lr": 1e-3}
    groups = param_groups(model, 0.05)
    assert len(groups) == 4 and any(len(g["params"]) == 2 and g["lr"] == 1e-3 for g in groups)
    assert len(param_groups(nn.Linear(2, 2), 0.1)) == 2


def test_the_schedule_scales_a_hinted_group_from_its_own_peak():
    model = _model()
    opt = make_optimizer(model, TRAIN)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor("cosine", s, 10, 0.0))
    for _ in range(5):
        opt.step()
        sched.step()
    factor = lr_factor("cosine", 5, 10, 0.0)
    assert abs(_group_of(opt, model.slow)["lr"] - 1e-3 * factor) < 1e-12
    assert abs(_group_of(opt, model[0].weight)["lr"] - 4e-3 * factor) < 1e-12


def test_float_parameters_on_the_cpu_get_the_fused_update_and_it_matches_the_per_tensor_loop():
    for optimizer in ("adamw", "sgd"):
        model, reference = _model(), _model()  # (a deep copy would drop the parameters' _optim hints)
        with torch.no_grad():
            for p, q in zip(model.parameters(), reference.parameters()):
                q.copy_(p)
        opt = make_optimizer(model, {**TRAIN, "optimizer": optimizer})
        assert all(g["fused"] for g in opt.param_groups), optimizer
        loop = make_optimizer(reference, {**TRAIN, "optimizer": optimizer})
        for g in loop.param_groups:
            g["fused"] = None  # torch's default update, one parameter at a time
        for _ in range(3):
            for m, o in ((model, opt), (reference, loop)):
                o.zero_grad()
                m[1](m[0](torch.linspace(-1, 1, 3))).square().sum().add(m.slow.sum() + m.slow_matrix.sum()).backward()
                o.step()
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert not torch.equal(model.slow, torch.ones_like(model.slow))  # the update did move them


@pytest.mark.filterwarnings("ignore:Complex modules:UserWarning")  # torch flags complex modules as new
def test_parameters_the_fused_kernels_do_not_take_fall_back_to_the_default_update():
    assert fused_update([nn.Parameter(torch.ones(2))])
    assert not fused_update([nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2, dtype=torch.complex64))])
    assert not fused_update([nn.Parameter(torch.ones(2, device="meta"))])
    assert not fused_update([])
    model = nn.Linear(2, 2).to(torch.complex64)
    opt = make_optimizer(model, TRAIN)
    assert not any(g["fused"] for g in opt.param_groups)
