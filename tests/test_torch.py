"""bnstats.torch: exact statistics of every BatchNorm layer's input, recalibration, audit, distributed, CLI.

``bnstats recalibrate`` is tested for its outputs, its checkpoint (edited, in use, resumed) and its refusals:
values that would put a NaN or an infinity into a model, hostile option values, nothing readable.

References keep every activation (pre-hooks clone each BN input), concatenate
them and compute with numpy in float64.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import bnstats.torch.layers  # noqa: E402
from bnstats import torch as bt  # noqa: E402
from bnstats.statistics import kernels  # noqa: E402
from bnstats.torch.fvcore import FvcoreReplay  # noqa: E402
from bnstats.torch.layers import first_batches  # noqa: E402
from bnstats.torch.moments import Moments, Scratch  # noqa: E402
from bnstats.torch.recalibrate import distance  # noqa: E402
from helpers import cli, one_line, one_line_error, stderr_lines  # noqa: E402

TOL = 1e-12


# -- models (float64) -------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out, momentum=None)
        self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


def stack2d():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5, momentum=None), nn.ReLU(),
        nn.BatchNorm2d(5, track_running_stats=False),  # left alone
        Residual(5, 6), nn.Flatten(), nn.Linear(6 * 6 * 6, 7), nn.BatchNorm1d(7), nn.ReLU())


def stack1d():
    return nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4))


def stack3d():
    return nn.Sequential(nn.Conv3d(2, 3, 3), nn.BatchNorm3d(3), nn.ReLU(), nn.Conv3d(3, 3, 2), nn.BatchNorm3d(3))


MODELS = {
    "2d": (stack2d, (3, 10, 10)),
    "1d": (stack1d, (2, 12)),
    "3d": (stack3d, (2, 6, 6, 6)),
}


def make(kind: str, batches: int = 5, batch_size: int = 8, seed: int = 0):
    """A float64 model with stale running buffers, and its batches (distinct means, so layers differ)."""
    factory, shape = MODELS[kind]
    torch.manual_seed(seed)
    model = factory().double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    data = [torch.randn(batch_size, *shape, dtype=torch.float64) * 1.7 + 0.3 * i for i in range(batches)]
    return model, data


def bn_names(model):
    return list(bt.bn_layers(model))


def captured_inputs(model, names, data):
    """Every input of the named layers, concatenated along the batch: {name: (values, C)} numpy arrays."""
    layers = dict(model.named_modules())
    kept = {name: [] for name in names}
    handles = [layers[n].register_forward_pre_hook(lambda m, a, n=n: kept[n].append(a[0].detach().clone()))
               for n in names]
    with torch.no_grad():
        for x in data:
            model(x)
    for h in handles:
        h.remove()
    out = {}
    for name, xs in kept.items():
        per_batch = [x.transpose(0, 1).reshape(x.shape[1], -1).T.numpy() for x in xs]
        out[name] = per_batch
    return out


def reference_train(model, data):
    """Keeps every activation: BN layers in train mode, the rest in eval; buffers restored by deepcopy."""
    model = copy.deepcopy(model)
    model.eval()
    for m in bt.bn_layers(model).values():
        m.train()
    return captured_inputs(model, bn_names(model), data)


def reference_sequential(model, data):
    """Layer by layer in forward order, earlier layers written with population stats (unbiased), all in eval."""
    model = copy.deepcopy(model).eval()
    layers = bt.bn_layers(model)
    order = []
    hs = [m.register_forward_pre_hook(lambda m, a, n=n: order.append(n)) for n, m in layers.items()]
    with torch.no_grad():
        model(data[0])
    for h in hs:
        h.remove()
    out = {}
    for name in dict.fromkeys(order):
        per_batch = captured_inputs(model, [name], data)[name]
        x = np.concatenate(per_batch)
        n = len(x)
        with torch.no_grad():
            layers[name].running_mean.copy_(torch.from_numpy(x.mean(0)))
            layers[name].running_var.copy_(torch.from_numpy(x.var(0) * n / (n - 1)))
        out[name] = per_batch
    return out


def close(a, b, tol=TOL):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


def check_against(stats, reference):
    assert set(stats) == set(reference)
    for name, per_batch in reference.items():
        x = np.concatenate(per_batch)
        got = stats[name]
        assert got["n"] == len(x)
        assert close(got["mean"], x.mean(0)), name
        assert close(got["var"], x.var(0)), name
        assert close(got["batch_mean"], np.mean([b.mean(0) for b in per_batch], 0)), name
        assert close(got["batch_var"], np.mean([b.var(0, ddof=1) for b in per_batch], 0)), name
        assert got["batches"] == len(per_batch)


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


def same_snapshot(a, b):
    return a[1] == b[1] and a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


# -- layer_stats -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("mode", ["train", "sequential"])
def test_layer_stats_equal_a_full_computation(kind, mode):
    model, data = make(kind)
    before = snapshot(model)
    stats = bt.layer_stats(model, data, mode=mode)
    reference = reference_train(model, data) if mode == "train" else reference_sequential(model, data)
    check_against(stats, reference)
    assert same_snapshot(before, snapshot(model))  # buffers, num_batches_tracked and flags as they were
    json.dumps(stats)  # plain floats


def test_modes_differ_and_first_layer_agrees():
    model, data = make("2d")
    train, seq = bt.layer_stats(model, data), bt.layer_stats(model, data, mode="sequential")
    assert train["1"] == seq["1"]  # nothing before the first layer
    assert not close(train["5"]["mean"], seq["5"]["mean"], 1e-6)


def test_untracked_layer_is_left_alone():
    model, data = make("2d")
    stats = bt.layer_stats(model, data)
    assert "7" not in stats and "1" in stats and "8.short.1" in stats
    bt.recalibrate_bn(model, data)
    assert model[7].running_mean is None and model[7].running_var is None


def test_max_batches_and_tuples():
    model, data = make("1d")
    pairs = [(x, torch.zeros(len(x))) for x in data]
    assert bt.layer_stats(model, pairs, max_batches=2) == bt.layer_stats(model, data[:2])


def test_training_flag_is_restored():
    model, data = make("2d")
    model.train()
    bt.layer_stats(model, data, mode="sequential")
    bt.recalibrate_bn(model, data)
    assert all(m.training for m in model.modules())


class OwnForward(nn.BatchNorm2d):
    """A subclass with its own forward: bnstats must let it compute its own batch statistics (training mode)."""

    def forward(self, x):
        return super().forward(x) * 1.0


@pytest.mark.slow
@pytest.mark.parametrize("special", [OwnForward, nn.SyncBatchNorm])
def test_layers_normalizing_themselves_or_handed_batch_statistics_agree(special):
    """Plain layers get each batch's statistics in eval mode; others run in training mode: same numbers."""
    model, data = make("2d")
    stats = bt.layer_stats(model, data)
    swapped = copy.deepcopy(model)
    old = swapped[1]
    swapped[1] = special(4).double()
    swapped[1].load_state_dict(old.state_dict())
    assert type(swapped[1]).forward is not nn.modules.batchnorm._BatchNorm.forward
    before = snapshot(swapped)
    check_against(bt.layer_stats(swapped, data), reference_train(swapped, data))
    assert same_snapshot(before, snapshot(swapped))
    assert bt.layer_stats(swapped, data).keys() == stats.keys()
    for name, layer in bt.layer_stats(swapped, data).items():
        assert close(layer["mean"], stats[name]["mean"]) and close(layer["var"], stats[name]["var"]), name


def test_float32_model_in_train_mode_matches_training_mode_batch_norm():
    """Handing a float32 layer the float64 batch statistics normalizes as training-mode BatchNorm does."""
    model, data = make("2d")
    model, data = model.float(), [x.float() for x in data]
    got = bt.layer_stats(model, data)
    reference = reference_train(model, data)
    for name, per_batch in reference.items():
        x = np.concatenate(per_batch).astype(np.float64)
        assert close(got[name]["mean"], x.mean(0), 1e-5) and close(got[name]["var"], x.var(0), 1e-5), name
    first = np.concatenate(reference["1"]).astype(np.float64)  # nothing normalized before it: exact
    assert close(got["1"]["mean"], first.mean(0)) and close(got["1"]["var"], first.var(0))


class Branches(nn.Module):
    """float32 BN layers that all read the model's input (no BN feeds another), in every shape the moments
    take: (N, C), (N, C, L), planes of 1, 9, 16, 64 and 1024 values, a 3d volume, a strided view, channels last."""

    def __init__(self):
        super().__init__()
        self.flat, self.seq = nn.BatchNorm1d(48), nn.BatchNorm1d(3)
        self.p1, self.p3, self.p4, self.p8, self.p32 = (nn.BatchNorm2d(3) for _ in range(5))
        self.vol, self.last = nn.BatchNorm3d(3), nn.BatchNorm2d(3)

    def forward(self, x):  # x: (N, 3, 32, 32)
        f = torch.nn.functional
        self.flat(x[:, :, :4, :4].reshape(len(x), -1))
        self.seq(x[:, :, 0, :])  # a strided view: torch ops
        for bn, size in ((self.p1, 1), (self.p3, 3), (self.p4, 4), (self.p8, 8), (self.p32, 32)):
            bn(f.adaptive_avg_pool2d(x, size) if size < 32 else x)
        self.vol(x.view(len(x), 3, 4, 8, 32))
        return self.last(x.contiguous(memory_format=torch.channels_last))  # not C-contiguous: torch ops


@pytest.mark.parametrize("kernel", [True, False])
def test_float32_inputs_are_counted_exactly_with_or_without_the_kernel(kernel, monkeypatch):
    """float32 activations are read in place by the compiled kernel (or copied to float64 for torch ops): the
    same statistics as numpy in float64, to 1e-12, also far from zero."""
    if kernel and kernels._kernels is None:
        pytest.skip("no compiled kernel in this build")
    if not kernel:
        monkeypatch.setattr(kernels, "_kernels", None)
    read_in_place, moments = [], kernels.channel_moments
    monkeypatch.setattr(kernels, "channel_moments", lambda x: read_in_place.append(x.shape) or moments(x))
    torch.manual_seed(1)
    model = Branches()
    data = [torch.randn(5, 3, 32, 32) * 0.01 + 1000 * (i + 1) for i in range(3)] + [torch.randn(2, 3, 32, 32)]
    stats = bt.layer_stats(model, data)
    captured = captured_inputs(model, bn_names(model), data)
    check_against(stats, {name: [b.astype(np.float64) for b in xs] for name, xs in captured.items()})
    assert stats["p1"]["n"] == 17 and stats["p32"]["n"] == 17 * 32 * 32 and stats["flat"]["n"] == 17
    assert len(read_in_place) == 7 * 4  # every batch of every layer but the strided and channels-last ones


def test_a_negated_view_is_counted_as_its_values():
    """A tensor with torch's negative bit (a lazily negated view) cannot be read in place: torch ops count it."""
    torch.manual_seed(2)
    x = torch.randn(6, 3, 5, 5)
    view, plain = torch._neg_view(x), (-x).clone()
    assert view.is_neg() and not plain.is_neg()
    got, want = bt.layer_stats(nn.BatchNorm2d(3), [view]), bt.layer_stats(nn.BatchNorm2d(3), [plain])
    assert close(got[""]["mean"], want[""]["mean"]) and close(got[""]["var"], want[""]["var"])


CAPABILITY_RUN = """
import hashlib, json, numpy as np, torch
from torch import nn
from bnstats.torch import layer_stats
rng = np.random.default_rng(0)
batches = [torch.from_numpy(rng.standard_normal((8, 512, 3, 3)).astype(np.float32) * 3 + i) for i in range(40)]
print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256(json.dumps(layer_stats(nn.BatchNorm2d(512), batches)).encode()).hexdigest())
"""


@pytest.mark.slow
def test_the_same_bits_whatever_vector_instructions_torch_uses():
    """The Chan merges are written without fused multiply-adds, which torch's AVX2 kernels would use and its
    default ones not: statistics do not depend on the CPU (checkpoints resume anywhere to the same bytes).
    Both runs are fresh processes with one environment (an in-process run may count on another path)."""
    digests = {subprocess.run([sys.executable, "-c", CAPABILITY_RUN], capture_output=True, text=True, check=True,
                              env={**os.environ, "ATEN_CPU_CAPABILITY": capability}).stdout.split()[1]
               for capability in ("default", "avx2")}
    assert len(digests) == 1, digests


def test_half_precision_buffers_are_not_handed_variances_they_cannot_hold():
    """fp16 running buffers overflow above 65504: such layers normalize themselves, in training mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm1d(2)).half()
    x = (torch.randn(64, 2) * 300).half()  # values fit fp16, their variance (~9e4) does not
    stats = bt.layer_stats(model, [x])
    assert min(stats["0"]["var"]) > 65504
    assert close(stats["1"]["var"], [1.0, 1.0], 1e-2)  # normalized with the batch's statistics, as in training


def test_one_value_per_channel_is_refused_as_in_training():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    before = snapshot(model)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bt.layer_stats(model, [torch.randn(1, 3)])
    assert same_snapshot(before, snapshot(model))


def test_errors():
    with pytest.raises(bt.NoBatchNormError):
        bt.layer_stats(nn.Sequential(nn.Linear(2, 2)), [torch.zeros(1, 2)])
    model, data = make("1d")
    with pytest.raises(TypeError, match="re-iterable"):
        bt.layer_stats(model, iter(data), mode="sequential")
    with pytest.raises(ValueError, match="mode"):
        bt.layer_stats(model, data, mode="eval")
    with pytest.raises(ValueError, match="variance"):
        bt.recalibrate_bn(model, data, variance="sample")


# -- the two variances ----------------------------------------------------------------------


def batch_average_reference(model, data):
    """pycls's precise BN (and fvcore's before 2021), written out: momentum 1, average the buffers."""
    model = copy.deepcopy(model).train()
    layers = list(bt.bn_layers(model).values())
    means = [torch.zeros_like(bn.running_mean) for bn in layers]
    variances = [torch.zeros_like(bn.running_var) for bn in layers]
    for bn in layers:
        bn.momentum = 1.0
    with torch.no_grad():
        for ind, x in enumerate(data):
            model(x)
            for i, bn in enumerate(layers):
                means[i] += (bn.running_mean - means[i]) / (ind + 1)
                variances[i] += (bn.running_var - variances[i]) / (ind + 1)
    return {name: (m.tolist(), v.tolist()) for name, m, v in zip(bt.bn_layers(model), means, variances)}


def test_batch_variance_is_precise_bn():
    model, data = make("3d")
    stats = bt.layer_stats(model, data)
    for name, (mean, var) in batch_average_reference(model, data).items():
        assert close(stats[name]["batch_mean"], mean, 1e-10)
        assert close(stats[name]["batch_var"], var, 1e-10)


def test_batch_average_is_what_swa_utils_update_bn_writes():
    """torch.optim.swa_utils.update_bn (momentum None: a cumulative average of each batch's buffers) writes the
    report's precise_bn estimate: the mean of the batch means and of the unbiased batch variances."""
    from torch.optim.swa_utils import update_bn

    model, data = make("1d", batches=6)
    report = bt.recalibrate_bn(copy.deepcopy(model), data)
    update_bn(data, model)
    for name, bn in bt.bn_layers(model).items():
        assert close(bn.running_mean.tolist(), report[name]["precise_bn"]["mean"], 1e-12)
        assert close(bn.running_var.tolist(), report[name]["precise_bn"]["var"], 1e-12)


def fvcore_buffers(model, data):
    """What fvcore's update_bn_stats writes: BN layers in training mode (it leaves the modes to its caller)."""
    from fvcore.nn.precise_bn import update_bn_stats

    model = copy.deepcopy(model).eval()
    for bn in bt.bn_layers(model).values():
        bn.train()
    update_bn_stats(model, data, num_iters=len(data))
    return {name: (bn.running_mean.tolist(), bn.running_var.tolist()) for name, bn in bt.bn_layers(model).items()}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fvcore's imports use torch.jit.script
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_fvcore_estimate_is_what_fvcore_writes(dtype):
    """fvcore (since 2021) estimates the population variance as a batch-size-weighted E[x²] − E[x]² in the
    buffers' dtype: the report replays it, to float64 rounding, or to the last bits of float32 batch moments."""
    pytest.importorskip("fvcore")
    model, data = make("2d", batches=4, batch_size=6)
    model, data = model.to(dtype), [x.to(dtype) for x in data]
    report = bt.recalibrate_bn(copy.deepcopy(model), data)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name, (mean, var) in fvcore_buffers(model, data).items():
        assert close(report[name]["fvcore"]["mean"], mean, tol), name
        assert close(report[name]["fvcore"]["var"], var, tol), name
        if dtype == torch.float64:  # and in float64 that is the population variance, to rounding
            assert close(report[name]["exact"]["var"], var, 1e-9), name


def test_the_fvcore_estimate_loses_a_small_variance_under_a_large_mean_in_float32():
    """E[x²] − E[x]² in float32: a channel with mean 1000 and spread 0.01 keeps no digit of its variance; the
    exact variance and the batch average keep theirs. The audit shows it."""
    torch.manual_seed(0)
    data = [torch.randn(64, 2) * 0.01 + 1000 for _ in range(5)]
    report = bt.recalibrate_bn(nn.BatchNorm1d(2), data)
    distance = report[""]["distance"]
    assert distance["fvcore"]["var"]["max_rel"] > 0.5
    assert distance["precise_bn"]["var"]["max_rel"] < 0.05  # the spread of 5 batch means, not rounding
    exact = np.concatenate([x.double().numpy() for x in data])
    assert close(report[""]["exact"]["var"], exact.var(0), 1e-6)
    assert "fvcore |Δvar|" in bt.audit_table(report)


def test_the_fvcore_replay_round_trips_overflows_exactly():
    """In float16 buffers fvcore's E[x²] overflows (mean 300: 9e4 > 65504); the saved state keeps inf and NaN
    bit for bit, and bnstats' own JSON reader takes it (a checkpoint holds it)."""
    from bnstats.jsonio import read_json

    state = Moments(FvcoreReplay(torch.float16, 2, "cpu"))
    scratch = Scratch()
    torch.manual_seed(0)
    for _ in range(3):
        state.add_batch(torch.randn(8, 2, dtype=torch.float64) * torch.tensor([1.0, 5.0]) + torch.tensor([0.0, 300.0]),
                        scratch)
    estimate = state.fvcore.estimate()
    assert math.isfinite(estimate["var"][0]) and not math.isfinite(estimate["var"][1])
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(json.dumps(state.to_dict()))
    back = Moments.from_dict(read_json(f.name), "cpu", 2, torch.float16)
    os.unlink(f.name)
    assert json.dumps(back.to_dict()) == json.dumps(state.to_dict())
    for bad in ({"tot": 24, "mean": "00", "square_mean": "0000"}, {"tot": 24, "mean": "zz", "square_mean": "00"},
                {"tot": 24, "mean": [0.0, 0.0], "square_mean": "00000000"}, {**state.fvcore.to_dict(), "tot": 23}):
        d = {**state.to_dict(), "fvcore": {**state.fvcore.to_dict(), **bad}}
        with pytest.raises((ValueError, TypeError)):
            Moments.from_dict(d, "cpu", 2, torch.float16)


def test_a_nan_estimate_is_a_nan_distance_whatever_the_channel_order():
    for values in ([0.5, math.nan], [math.nan, 0.5]):
        d = distance(values, [0.5, 0.5])
        assert math.isnan(d["max_abs"]) and math.isnan(d["max_rel"])
    assert distance([1.0, 3.0], [1.0, 0.0]) == {"max_abs": 3.0, "max_rel": 0.0}  # to an exact 0: left out


def test_an_empty_batch_counts_nothing():
    model, data = make("2d")
    empty = data[0][:0]
    assert bt.layer_stats(model, [data[0], empty, *data[1:]]) == bt.layer_stats(model, data)


def test_population_minus_batch_average_is_the_spread_of_batch_means():
    model, data = make("2d", batches=6, batch_size=4)
    stats = bt.layer_stats(model, data)
    per_batch = reference_train(model, data)
    for name, got in stats.items():
        m = got["n"] // got["batches"]  # values per channel in one batch (equal batches)
        means = np.array([b.mean(0) for b in per_batch[name]])
        between = means.var(0)  # population variance of the batch means
        biased_average = np.array(got["batch_var"]) * (m - 1) / m
        assert close(np.array(got["var"]) - biased_average, between, 1e-9)
    first = stats["1"]  # its input is the data, whose batch means differ: precise BN misses that spread
    m = first["n"] // first["batches"]
    assert (np.array(first["var"]) - np.array(first["batch_var"]) * (m - 1) / m > 1e-4).all()


def test_population_statistics_make_eval_equal_one_big_training_batch():
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(3, eps=1e-5).double()
    data = [torch.randn(4, 3, 5, 5, dtype=torch.float64) * 3 + i for i in range(4)]
    report = bt.recalibrate_bn(bn, data)
    n = report[""]["n"]
    assert n == 16 * 25 and bn.num_batches_tracked.item() == 4
    assert close(bn.running_var, np.array(report[""]["exact"]["var"]) * n / (n - 1))  # unbiased, as PyTorch keeps
    everything = torch.cat(data)
    with torch.no_grad():
        train_out = copy.deepcopy(bn).train()(everything)
        bn.running_var.mul_((n - 1) / n)  # undo the unbiased convention: BN's training forward uses the biased one
        eval_out = bn.eval()(everything)
    assert torch.allclose(eval_out, train_out, rtol=1e-12, atol=1e-12)


def test_recalibrate_report_and_batch_variance():
    model, data = make("2d")
    held = {n: (m.running_mean.tolist(), m.running_var.tolist()) for n, m in bt.bn_layers(model).items()}
    stats = bt.layer_stats(model, data)
    report = bt.recalibrate_bn(copy.deepcopy(model), data, variance="batch")
    for name, layer in report.items():
        assert layer["before"] == {"mean": held[name][0], "var": held[name][1]}
        assert layer["exact"] == {"mean": stats[name]["mean"], "var": stats[name]["var"]}
        assert close(layer["written"]["var"], stats[name]["batch_var"])
        assert close(layer["written"]["mean"], stats[name]["batch_mean"])
        d = layer["distance"]["before"]["var"]
        exact, held_var = np.array(stats[name]["var"]), np.array(held[name][1])
        assert close(d["max_abs"], np.abs(held_var - exact).max())
        assert close(d["max_rel"], (np.abs(held_var - exact) / np.abs(exact)).max())
    parsed = json.loads(bt.report_json(report))
    assert set(parsed["layers"]) == set(report)
    table = bt.audit_table(report)
    assert table.splitlines()[0].startswith("layer") and len(table.splitlines()) == len(report) + 1


def test_sequential_recalibration_writes_what_it_counted():
    model, data = make("2d")
    stats = bt.layer_stats(model, data, mode="sequential")
    bt.recalibrate_bn(model, data, mode="sequential")
    for name, bn in bt.bn_layers(model).items():
        n = stats[name]["n"]
        assert close(bn.running_mean, stats[name]["mean"])
        assert close(bn.running_var, np.array(stats[name]["var"]) * n / (n - 1))
    # now at inference every layer sees inputs whose statistics are what it holds
    again = bt.layer_stats(model, data, mode="sequential")
    for name in stats:
        assert close(again[name]["mean"], stats[name]["mean"], 1e-10)


def test_import_bnstats_does_not_import_torch():
    code = "import sys, bnstats, bnstats.cli.main; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- distributed -------------------------------------------------------------------------------

DISTRIBUTED_SCRIPT = r'''
import json, sys
import torch
import torch.distributed as dist

sys.path.insert(0, TESTS)
from test_torch import make
from bnstats import torch as bt


class Branch(torch.nn.Module):
    """Layer b is reached by batches of an even size only."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)

    def forward(self, x):
        x = self.a(x)
        return self.b(x) if len(x) % 2 == 0 else x


def run(rank, world, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    model, data = make("2d", batches=5)
    shard = data[:3] if rank == 0 else data[3:]  # unequal shards: rank 0 counts batches 0-2, rank 1 batches 3-4
    stats = bt.layer_stats(model, shard)
    report = bt.recalibrate_bn(model, shard, mode="sequential")
    written = {k: v.tolist() for k, v in model.state_dict().items()}
    torch.manual_seed(rank)  # rank 1's batches never reach layer b
    branch = bt.recalibrate_bn(Branch().double(), [torch.randn(4 + rank, 3, dtype=torch.float64) for _ in range(2)])
    with open(f"{folder}/rank{rank}.json", "w") as f:
        f.write(json.dumps({"stats": stats, "report": report, "written": written, "branch": branch}))
    dist.destroy_process_group()


if __name__ == "__main__":  # one rank per process, started by the test (no spawning parent: one torch import fewer)
    run(int(sys.argv[1]), 2, sys.argv[2])
'''


@pytest.mark.slow
def test_two_ranks_give_identical_statistics_equal_to_one_process(tmp_path):
    from pathlib import Path
    script = tmp_path / "ranks.py"
    script.write_text(f"TESTS = {str(Path(__file__).resolve().parent)!r}\n" + DISTRIBUTED_SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path)], cwd=tmp_path)
             for rank in range(2)]
    try:
        for proc in procs:
            assert proc.wait(timeout=120) == 0
    finally:
        for proc in procs:  # a failed rank leaves the other waiting at the rendezvous
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    texts = [(tmp_path / f"rank{r}.json").read_text() for r in range(2)]
    ranks = [json.loads(text) for text in texts]
    local = [{name: (layer.pop("fvcore"), layer["distance"].pop("fvcore")) for name, layer in got["report"].items()}
             for got in ranks]  # what fvcore would hold on each rank, counting its own batches: they differ
    assert local[0].keys() == local[1].keys() and local[0] != local[1]
    branch = [got.pop("branch") for got in ranks]  # layer b: rank 0's 8 values per channel, on both ranks
    assert branch[0]["b"]["exact"] == branch[1]["b"]["exact"] and branch[0]["b"]["n"] == branch[1]["b"]["n"] == 8
    assert branch[1]["b"]["fvcore"] == {"mean": [0.0] * 3, "var": [0.0] * 3}  # fvcore there holds its zeros
    assert json.dumps(ranks[0]) == json.dumps(ranks[1])  # everything else: the same bytes on both ranks
    got = ranks[0]
    model, data = make("2d", batches=5)
    stats = bt.layer_stats(model, data)
    report = bt.recalibrate_bn(model, data, mode="sequential")
    for name in stats:
        for key in ("mean", "var", "batch_var", "batch_mean"):
            assert close(got["stats"][name][key], stats[name][key]), (name, key)
        assert got["stats"][name]["n"] == stats[name]["n"] and got["stats"][name]["batches"] == 5
        assert close(got["report"][name]["exact"]["var"], report[name]["exact"]["var"])
    for key, value in model.state_dict().items():
        assert close(got["written"][key], value.tolist()), key


# -- bnstats recalibrate ------------------------------------------------------------------------

TINY_MODEL = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
                         nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2))


def no_bn():
    return nn.Sequential(nn.Conv2d(3, 4, 3))


def broken():
    raise RuntimeError("cannot build")


class StopAt(nn.Module):
    """Presses Ctrl-C (a real SIGINT to this process) on forward call STOP_AT, counted over every pass, the
    first time only (the file STOP_MARKER remembers)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        import os
        import signal
        self.calls += 1
        marker = os.environ["STOP_MARKER"]
        if self.calls == int(os.environ["STOP_AT"]) and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGINT)
        return x


def interrupted():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), StopAt())


def stop_last():  # StopAt after the last layer: STOP_AT counts batches
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2),
                         StopAt())


def stop_first():  # StopAt before the first layer: STOP_AT counts every pass's forwards (sequential mode)
    torch.manual_seed(0)
    return nn.Sequential(StopAt(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3),
                         nn.BatchNorm2d(2), nn.ReLU(), nn.BatchNorm2d(2))


class Fails(nn.Module):
    def forward(self, x):
        raise RuntimeError("kaboom\\nand a second line")


def failing():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Fails())


def grey_input():  # a one-channel model fed RGB images
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))


model_object = build()  # --model may name a model, not only a function that builds one
'''


@pytest.fixture
def cli_setup(tmp_path, monkeypatch):
    from PIL import Image
    (tmp_path / "tinymodels.py").write_text(TINY_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tinymodels", None)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    (images / "05b.png").write_bytes(b"not an image")
    return tmp_path, images


def run_cli(*args):
    return cli("recalibrate", *args)


def test_cli_recalibrates_like_the_library(cli_setup):
    from PIL import Image
    tmp_path, images = cli_setup
    result = run_cli("--model", "tinymodels:build", images, "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3",
                     "--batch-size", 4, "-o", tmp_path / "out.pt", "--report", tmp_path / "layers.json")
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "05b.png" in result.stderr
    assert "running |Δmean|" in result.stderr  # the audit table
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    # the same images through the library
    import tinymodels
    model = tinymodels.build()
    files = sorted(p for p in images.iterdir() if p.name != "05b.png")
    xs = [(torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1).float() / 255
           - torch.tensor([0.5, 0.4, 0.3]).view(-1, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(-1, 1, 1)
          for f in files]
    stats = bt.layer_stats(model, [torch.stack(xs[i:i + 4]) for i in range(0, len(xs), 4)])
    for name in ("1", "5"):
        n = stats[name]["n"]
        assert close(state[f"{name}.running_mean"], stats[name]["mean"], 1e-6)
        assert close(state[f"{name}.running_var"], np.array(stats[name]["var"]) * n / (n - 1), 1e-6)
        assert state[f"{name}.num_batches_tracked"].item() == 3
    layers = json.loads((tmp_path / "layers.json").read_text())["layers"]
    assert set(layers) == {"1", "5"} and layers["1"]["n"] == 10 * 100
    # --weights loads, --dry-run writes nothing and prints the table on stdout
    result = run_cli("--model", "tinymodels:build", "--weights", tmp_path / "out.pt", images, "--batch-size", 4,
                     "--bn-mode", "sequential", "--dry-run", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("layer") and not (tmp_path / "out2.pt").exists()


def test_cli_one_line_errors(cli_setup):
    tmp_path, images = cli_setup
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    cases = {
        ("--model", "tinymodels:build", "--weights", tmp_path / "garbage.pt"):
            "not a file of tensors torch.load reads safely",
        ("--model", "nosuchmodule:build"): "cannot import nosuchmodule",
        ("--model", "tinymodels:nothing"): "has no nothing",
        ("--model", "tinymodels:broken"): "the factory failed: RuntimeError: cannot build",
        ("--model", "tinymodels:no_bn"): "has no BatchNorm layer",
        ("--model", "tinymodels:build", "--weights", tmp_path / "other.pt"): "do not match the model",
    }
    for args, message in cases.items():
        result = run_cli(*args, images, "--batch-size", 4, "--dry-run")
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], (args, result.stderr)
    from PIL import Image
    Image.new("RGB", (20, 16)).save(images / "99.png")
    result = run_cli("--model", "tinymodels:build", images, "--batch-size", 4, "--dry-run", "-q")
    assert result.exit_code == 1 and "99.png is 20x16, earlier images 12x12: give --resize" in result.stderr
    result = run_cli("--model", "tinymodels:build", images, "--batch-size", 4, "--dry-run", "-q", "--resize", "8x8")
    assert result.exit_code == 0, result.output
    result = run_cli("--model", "tinymodels:build", images, "--batch-size", 4)
    assert result.exit_code == 2 and "--dry-run" in result.stderr


def test_cli_a_model_that_fails_on_a_batch_is_one_line(cli_setup):
    tmp_path, images = cli_setup
    for model, message in (("failing", "the model failed on a batch: RuntimeError: kaboom"),
                           ("grey_input", "the model failed on a batch: RuntimeError: Given groups=1")):
        result = run_cli("--model", f"tinymodels:{model}", images, "--batch-size", 4, "--dry-run", "-q")
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"Error: {message}"), result.stderr


def test_cli_takes_a_model_object(cli_setup):
    tmp_path, images = cli_setup
    args = (images, "--batch-size", 4, "-q")
    assert run_cli("--model", "tinymodels:model_object", *args, "-o", tmp_path / "a.pt").exit_code == 0
    assert run_cli("--model", "tinymodels:build", *args, "-o", tmp_path / "b.pt").exit_code == 0
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_images_of_other_bands_are_named_as_such(cli_setup):
    from PIL import Image
    tmp_path, images = cli_setup
    Image.new("L", (12, 12)).save(images / "99.png")  # the same size, one band
    result = run_cli("--model", "tinymodels:build", images, "--batch-size", 4, "--dry-run", "-q", "--mode", "native")
    assert result.exit_code == 1 and "99.png has bands L, earlier images RGB" in result.stderr


def test_cli_a_stop_once_counting_is_done_waits_for_both_outputs(cli_setup, monkeypatch):
    """Ctrl-C while the outputs are written: both are written (never a new report beside an old model), the
    checkpoint goes, and the run ends as done."""
    import signal
    tmp_path, images = cli_setup
    real = bt.audit_table
    monkeypatch.setattr(bt, "audit_table", lambda report: os.kill(os.getpid(), signal.SIGINT) or real(report))
    result = run_cli("--model", "tinymodels:build", images, "--batch-size", 4, "-q", "-o", tmp_path / "m.pt",
                     "--report", tmp_path / "r.json", "--checkpoint", tmp_path / "ck.json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.pt").exists() and (tmp_path / "r.json").exists() and not (tmp_path / "ck.json").exists()


def test_cli_ctrl_c_writes_nothing_and_exits_130(cli_setup, monkeypatch):
    tmp_path, images = stop_at_setup(cli_setup, monkeypatch, 2)  # the second batch
    result = run_cli("--model", "tinymodels:interrupted", images, "--batch-size", 2, "-o", tmp_path / "out.pt",
                     "--report", tmp_path / "layers.json")
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.stderr and "interrupted" in result.stderr.lower()
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "layers.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_cli_checkpoint_resumes_to_the_same_bytes(cli_setup, monkeypatch):
    tmp_path, images = stop_at_setup(cli_setup, monkeypatch, 3)  # the third batch
    (tmp_path / "stopped").write_text("")  # no stop: the reference run
    args = ("--model", "tinymodels:stop_last", images, "--batch-size", 2, "--max-batches", 4, "-q")
    assert run_cli(*args, "-o", tmp_path / "whole.pt").exit_code == 0
    (tmp_path / "stopped").unlink()
    ck = tmp_path / "ck.json"
    result = run_cli(*args, "-o", tmp_path / "resumed.pt", "--checkpoint", ck)
    assert result.exit_code == 130 and ck.exists() and not (tmp_path / "resumed.pt").exists(), result.output
    saved = json.loads(ck.read_text())
    assert saved["batches"] == 2 and saved["items"] >= 4  # two whole batches (and the bad file before them)
    # the states are what a resume starts from: a tampered mean shows in the result
    tampered = tmp_path / "tampered.json"
    from bnstats.running.checkpoint import _digest
    saved["states"]["1"]["mean"][0] += 1.0
    saved["digest"] = _digest(saved)  # forged, well signed: an edit without it is "damaged" (see
    # test_an_edited_recalibrate_checkpoint_is_damaged_not_other_buffers)
    tampered.write_text(json.dumps(saved))
    assert run_cli(*args, "-o", tmp_path / "tampered.pt", "--checkpoint", tampered).exit_code == 0
    result = run_cli(*args, "-o", tmp_path / "resumed.pt", "--checkpoint", ck)
    assert result.exit_code == 0, result.output
    assert not ck.exists()
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    changed = torch.load(tmp_path / "tampered.pt", weights_only=True)
    assert not torch.equal(changed["1.running_mean"], whole["1.running_mean"])
    # another run's checkpoint is refused: another setting, another mode
    ck.write_text(json.dumps(saved))
    result = run_cli(*args, "-o", tmp_path / "x.pt", "--checkpoint", ck, "--bn-mode", "sequential")
    assert result.exit_code == 1 and "checkpoint of another run" in result.stderr
    saved["fingerprint"]["settings"]["batch_size"] = 99  # a checkpoint of the same files with another setting
    saved["digest"] = _digest(saved)
    ck.write_text(json.dumps(saved))
    result = run_cli(*args, "-o", tmp_path / "x.pt", "--checkpoint", ck)
    assert result.exit_code == 1 and "checkpoint of another run" in result.stderr


def stop_at_setup(cli_setup, monkeypatch, stop_at):
    """tinymodels' StopAt presses Ctrl-C on forward call ``stop_at``, once (the marker ``stopped``)."""
    tmp_path, images = cli_setup
    monkeypatch.setenv("STOP_AT", str(stop_at))
    monkeypatch.setenv("STOP_MARKER", str(tmp_path / "stopped"))
    return tmp_path, images


@pytest.mark.parametrize("stop_at, finished, limit", [(4, 0, None), (9, 1, None), (13, 2, None), (7, 1, 3)])
def test_cli_sequential_checkpoint_resumes_to_the_same_bytes(cli_setup, monkeypatch, stop_at, finished, limit):
    """Sequential mode: Ctrl-C in the first, second or third layer's pass (10 images and a bad file in batches
    of 2: five batches a pass, after one batch that learns the order), then the same command goes on to the
    bytes of a run never stopped, the layers done kept and not counted again."""
    tmp_path, images = stop_at_setup(cli_setup, monkeypatch, stop_at)
    args = ("--model", "tinymodels:stop_first", images, "--batch-size", 2, "--bn-mode", "sequential", "-q",
            *(("--max-batches", limit) if limit else ()))
    (tmp_path / "stopped").write_text("")  # the reference run is not stopped
    assert run_cli(*args, "-o", tmp_path / "whole.pt", "--report", tmp_path / "whole.json").exit_code == 0
    (tmp_path / "stopped").unlink()
    ck = tmp_path / "ck.json"
    resumed = (*args, "-o", tmp_path / "resumed.pt", "--report", tmp_path / "resumed.json", "--checkpoint", ck)
    result = run_cli(*resumed)
    assert result.exit_code == 130 and ck.exists(), result.output
    saved = json.loads(ck.read_text())
    assert saved["order"] == [["2", "5", "7"], True] and list(saved["finished"]) == ["2", "5", "7"][:finished]
    assert saved["batches"] >= 1 and list(saved["states"]) == [["2", "5", "7"][finished]]
    counted = []  # the layers the resumed run counts
    monkeypatch.setattr(bnstats.torch.layers, "counting_pass", lambda *a, **k: counted.append(a[2]) or counting_pass(*a, **k))
    result = run_cli(*resumed)
    assert result.exit_code == 0, result.output
    assert counted == [[name] for name in ["2", "5", "7"][finished:]] and not ck.exists()
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    again = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)
    assert (tmp_path / "whole.json").read_bytes() == (tmp_path / "resumed.json").read_bytes()


from bnstats.torch.layers import counting_pass  # noqa: E402


def test_cli_a_damaged_sequential_checkpoint_is_one_line(cli_setup, monkeypatch):
    tmp_path, images = stop_at_setup(cli_setup, monkeypatch, 9)
    ck = tmp_path / "ck.json"
    args = ("--model", "tinymodels:stop_first", images, "--batch-size", 2, "--bn-mode", "sequential", "-q", "--checkpoint",
            ck, "-o", tmp_path / "x.pt")
    assert run_cli(*args).exit_code == 130
    good = json.loads(ck.read_text())
    damages = [lambda d: d["finished"]["2"].update(mean=[0.0]), lambda d: d["finished"]["2"].pop("m2"),
               lambda d: d.update(order=[["2", "5"], True]), lambda d: d.update(order=[["2", "5", "x"], True]),
               lambda d: d.update(states={"7": d["states"]["5"]}), lambda d: d.update(finished=["2"]),
               lambda d: d.update(order="2"), lambda d: d["finished"].update({"2": "x"}),
               lambda d: d["finished"]["2"].update(n="5"), lambda d: d["finished"]["2"].update(batches="3"),
               lambda d: d["finished"]["2"].update(mean=[None] * 4), lambda d: d["finished"]["2"].update(n=1e400),
               lambda d: d["finished"]["2"].update(mean={"a": 1, "b": 2, "c": 3, "d": 4}),
               lambda d: d["states"]["5"].update(n=1e400), lambda d: d.update(batches=1e400),
               lambda d: d["states"]["5"].update(mean=[0.0], m2=[1.0], batch_mean_sum=[0.0], batch_var_sum=[1.0]),
               lambda d: d.update(items=-3), lambda d: d.update(items=999), lambda d: d.update(batches=-5),
               lambda d: d["finished"]["2"].pop("fvcore"), lambda d: d["finished"]["2"].update(fvcore="x"),
               lambda d: d["finished"]["2"]["fvcore"].update(mean="00"),
               lambda d: d["finished"]["2"]["fvcore"].update(tot=0), lambda d: d["states"]["5"].pop("fvcore"),
               lambda d: d["states"]["5"]["fvcore"].update(tot=0), lambda d: d.update(order=None),
               lambda d: d["finished"]["2"]["m2"].__setitem__(0, -1.0)]
    for damage in damages:
        saved = json.loads(json.dumps(good))
        damage(saved)
        ck.write_text(json.dumps(saved))
        result = run_cli(*args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "damaged" in result.stderr, result.stderr


def test_cli_resume_after_a_pass_that_reached_max_batches(cli_setup, monkeypatch):
    """Stopped after a layer's last allowed batch, before its pass was closed: the resumed run reads no batch of
    that pass, and the next pass still starts at the first image (the same bytes as a run never stopped)."""
    tmp_path, images = stop_at_setup(cli_setup, monkeypatch, 10**9)  # StopAt never stops
    args = ("--model", "tinymodels:stop_first", images, "--batch-size", 2, "--bn-mode", "sequential", "-q", "--max-batches", 2)
    assert run_cli(*args, "-o", tmp_path / "whole.pt").exit_code == 0
    ck, stopped = tmp_path / "ck.json", []

    def stop_once(*a, **k):  # Ctrl-C while the first layer's result is merged
        if not stopped:
            stopped.append(1)
            raise KeyboardInterrupt
        return all_merge(*a, **k)
    monkeypatch.setattr(bnstats.torch.layers, "all_merge", stop_once)
    assert run_cli(*args, "-o", tmp_path / "resumed.pt", "--checkpoint", ck).exit_code == 130
    saved = json.loads(ck.read_text())
    assert saved["batches"] == 2 and saved["finished"] == {} and list(saved["states"]) == ["2"]
    assert run_cli(*args, "-o", tmp_path / "resumed.pt", "--checkpoint", ck).exit_code == 0
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    again = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert all(torch.equal(whole[k], again[k]) for k in whole)


from bnstats.torch.moments import all_merge  # noqa: E402


def test_cli_ctrl_c_before_the_first_batch_saves_nothing(cli_setup, monkeypatch):
    tmp_path, images = stop_at_setup(cli_setup, monkeypatch, 1)  # in the batch that learns the layers' order
    ck = tmp_path / "ck.json"
    result = run_cli("--model", "tinymodels:stop_first", images, "--batch-size", 2, "--bn-mode", "sequential",
                     "--checkpoint", ck, "-o", tmp_path / "x.pt")
    assert result.exit_code == 130 and not ck.exists() and "progress saved" not in result.stderr


def test_max_batches_reads_no_batch_past_them():
    """Each batch read is decoded images: the limit stops before the next one is asked for."""
    pulled = []

    def batches():
        for i in range(5):
            pulled.append(i)
            yield torch.zeros(2, 3)

    for limit, expected in ((2, [0, 1]), (0, []), (None, [0, 1, 2, 3, 4])):
        pulled.clear()
        assert len(list(first_batches(batches(), limit))) == len(expected) and pulled == expected


def stopped_with_checkpoint(cli_setup, monkeypatch):
    """A recalibrate run stopped by Ctrl-C on its third batch: ``(arguments, checkpoint)`` to go on with."""
    tmp_path, images = stop_at_setup(cli_setup, monkeypatch, 3)
    ck = tmp_path / "ck.json"
    args = ("--model", "tinymodels:stop_last", images, "--batch-size", 2, "-q", "--checkpoint", ck)
    assert run_cli(*args, "-o", tmp_path / "x.pt").exit_code == 130 and ck.exists()
    return args, ck


def test_cli_dry_run_with_a_checkpoint_removes_it_when_done(cli_setup, monkeypatch):
    """A finished --dry-run leaves no checkpoint behind (the next run would have 'resumed' with nothing left)."""
    args, ck = stopped_with_checkpoint(cli_setup, monkeypatch)
    result = run_cli(*args, "--dry-run")  # goes on from the checkpoint, and finishes
    assert result.exit_code == 0, result.output
    assert not ck.exists() and "1" in result.stdout  # the audit table on stdout


def test_cli_a_damaged_layer_state_in_a_checkpoint_is_one_line(cli_setup, monkeypatch):
    args, ck = stopped_with_checkpoint(cli_setup, monkeypatch)
    args = (*args, "-o", cli_setup[0] / "x.pt")
    good = json.loads(ck.read_text())
    for damage in ({"n": 3}, {"n": 3, "batches": 1, "mean": [0.0], "m2": [1.0, 2.0], "batch_mean_sum": [0.0],
                               "batch_var_sum": [0.0]}, "not a state"):
        saved = json.loads(json.dumps(good))
        saved["states"]["1"] = damage
        ck.write_text(json.dumps(saved))
        result = run_cli(*args)
        assert result.exit_code == 1 and "damaged" in result.stderr and "Traceback" not in result.output, result.output
    # accepted before, and counted wrong: no states at all, a layer's state missing, a counted layer with no
    # values, a negative sum of squares
    for damage in (lambda d: d.update(states=[]), lambda d: d["states"].pop("1"),
                   lambda d: d["states"]["1"].update(n=0), lambda d: d["states"]["1"]["m2"].__setitem__(0, -5e8)):
        saved = json.loads(json.dumps(good))
        damage(saved)
        ck.write_text(json.dumps(saved))
        result = run_cli(*args)
        assert result.exit_code == 1 and "damaged" in result.stderr and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("mode", ["train", "sequential"])
def test_a_recalibrate_job_built_in_python_gives_the_clis_report_and_buffers(cli_setup, mode):
    """RecalibrateJob owns reading the images as batches, the checkpoint and the one-line errors: from Python
    the same report bytes and buffers as ``bnstats recalibrate``, and a finished checkpoint goes."""
    from bnstats.inputs.select import select
    from bnstats.torch.job import RecalibrateJob
    tmp_path, images = cli_setup
    result = run_cli("--model", "tinymodels:build", images, "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3",
                     "--batch-size", 4, "--bn-mode", mode, "-q", "-o", tmp_path / "cli.pt",
                     "--report", tmp_path / "cli.json")
    assert result.exit_code == 0, result.output
    import tinymodels
    model = tinymodels.build()
    job = RecalibrateJob(model, select([str(images)]), batch_size=4, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                         mode=mode, checkpoint=str(tmp_path / "ck.json"))
    report = job.run()
    job.done()
    assert bt.report_json(report) == (tmp_path / "cli.json").read_text()
    cli_state = torch.load(tmp_path / "cli.pt", weights_only=True)
    assert all(torch.equal(cli_state[k], v) for k, v in model.state_dict().items())
    assert not (tmp_path / "ck.json").exists() and not (tmp_path / "ck.json.lock").exists()


def test_a_recalibrate_job_says_in_one_line_that_no_image_could_be_read(cli_setup):
    from bnstats.torch.batches import RecalibrationError
    from bnstats.torch.job import RecalibrateJob
    tmp_path, images = cli_setup
    import tinymodels
    with pytest.raises(RecalibrationError, match=r"none of the 1 images could be read \(first: .*05b.png"):
        RecalibrateJob(tinymodels.build(), [str(images / "05b.png")], batch_size=2).run()


# -- bnstats recalibrate: its checkpoint (edits, the lock, outputs on the lock file) -------------------------


TWO_BN_MODEL = '''
import torch.nn as nn
def tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                         nn.BatchNorm2d(2))
'''


@pytest.fixture()
def checkpointed_recal(small_pngs, tmp_path, monkeypatch):
    """A model module on sys.path and the args of a recalibrate run with --checkpoint and --report."""
    pytest.importorskip("torch")
    import sys

    (tmp_path / "attackmodels.py").write_text(TWO_BN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("attackmodels", None)
    ck = tmp_path / "ck.json"
    args = ["recalibrate", "--model", "attackmodels:tiny", small_pngs, "--center-crop", "4", "--batch-size", "5", "-q",
            "--checkpoint", ck,
            "-o", tmp_path / "o.pt", "--report", tmp_path / "r.json"]
    return args, ck, tmp_path


def _kept_checkpoint(monkeypatch, args):
    """Run ``args`` to the end, saving after every batch and keeping the checkpoint (a stop after the last
    batch, before the outputs were written)."""
    from bnstats.running import checkpoint

    with monkeypatch.context() as m:
        m.setattr(checkpoint.SavedRun, "remove", lambda self: self.unlock())
        m.setattr(checkpoint.SavedRun, "due", lambda self: True)
        cli(*args, expect=0)


@pytest.mark.parametrize("edit", ["state", "items"])
def test_an_edited_recalibrate_checkpoint_is_damaged_not_other_buffers(checkpointed_recal, monkeypatch, edit):
    """A number changed in a recalibrate checkpoint (without its digest) was resumed into the model: an
    exact mean of 0.9 written instead of 0.14, exit 0."""
    args, ck, _ = checkpointed_recal
    _kept_checkpoint(monkeypatch, args)
    doc = json.loads(ck.read_text())
    if edit == "state":
        doc["states"]["1"]["mean"][0] = 0.9
    else:
        doc["items"] = doc["items"] - 5
    ck.write_text(json.dumps(doc))
    line = one_line(cli(*args))
    assert "damaged" in line and "ck.json" in line


def test_a_recalibrate_checkpoint_in_use_by_another_run_is_one_line(checkpointed_recal):
    """Two recalibrate runs on one --checkpoint both saved into it; the second now stops at once, as
    compute's does, naming the owner's pid."""
    import subprocess
    import sys

    args, ck, _ = checkpointed_recal
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(ck) + '.lock'!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'bnstats checkpoint lock, pid {os.getpid()}\\n'.encode())\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        line = one_line(cli(*args))
        assert "in use by another run" in line and f"pid {holder.pid}" in line
        assert not ck.exists()
    finally:
        holder.communicate("")
    cli(*args, expect=0)  # the lock gone, the run goes on
    assert not ck.exists() and not os.path.exists(str(ck) + ".lock")


@pytest.mark.parametrize("option", ["-o", "--report"])
def test_a_recalibrate_output_on_the_checkpoints_lock_file_is_a_usage_error(checkpointed_recal, option):
    """The lock file is deleted when the run ends: an output there would be written, then deleted."""
    args, ck, tmp_path = checkpointed_recal
    args = [a for a in args]
    args[args.index(option) + 1] = str(ck) + ".lock"
    result = cli(*args)
    assert result.exit_code == 2 and "lock" in result.stderr


# -- bnstats recalibrate: no NaN into a model ----------------------------------------------------------------


STOP_MODEL = '''
import os, signal
import torch
from torch import nn


class StopAt(nn.Module):
    """Ctrl-C (a real SIGINT) on forward call STOP_AT, once (the file STOP_MARKER remembers)."""

    calls = 0

    def forward(self, x):
        StopAt.calls += 1
        marker = os.environ.get("STOP_MARKER")
        if marker and StopAt.calls == int(os.environ["STOP_AT"]) and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGINT)
        return x


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2),
                         StopAt())
'''


@pytest.fixture
def model_setup(tmp_path, monkeypatch, images):
    torch = pytest.importorskip("torch")
    (tmp_path / "tinyedge.py").write_text(STOP_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tinyedge", None)
    return tmp_path, images[0], torch


def recal(*args):
    return cli("recalibrate", "--model", "tinyedge:build", "--batch-size", 2, *args)


@pytest.mark.parametrize("mean, std, bad", [("0.5,0.5,0.5", "1e-300,1,1", "std"), ("nan,0.5,0.5", "1,1,1", "mean"),
                                            ("0.5,0.5,0.5", "inf,1,1", "std"), ("0.5,0.5,0.5", "-1,1,1", "std"),
                                            ("0.5,0.5,0.5", "0,1,1", "std"), ("0.5,0.5", "1,1,1", "one per")])
def test_normalization_values_that_make_inputs_non_finite_are_usage_errors(model_setup, mean, std, bad):
    tmp_path, folder, _ = model_setup
    line = one_line_error(recal(folder, "--mean", mean, "--std", std, "-o", tmp_path / "m.pt"), 2)
    assert bad in line and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("stats, code", [('{"mean": [0.5, null, 0.5], "std": [1, 1, 1]}', 2),
                                         ('{"mean": [0.5, NaN, 0.5], "std": [1, 1, 1]}', 1),  # not bnstats' JSON
                                         ('{"mean": [0.5, 0.5, 0.5], "std": [1e-300, 1, 1]}', 2),
                                         ('{"mean": [0.5, 0.5, 0.5], "std": [true, 1, 1]}', 2)])
def test_a_normalize_file_with_unusable_values_is_refused(model_setup, stats, code):
    tmp_path, folder, _ = model_setup
    (tmp_path / "s.json").write_text(stats)
    line = one_line_error(recal(folder, "--normalize", tmp_path / "s.json", "-o", tmp_path / "m.pt"), code)
    assert "s.json" in line and not (tmp_path / "m.pt").exists()


def test_statistics_that_overflow_fail_in_one_line_and_write_no_model(model_setup):
    """std 1e-30 passes the check (1/std fits float32), yet the first layer's variance overflows float32."""
    tmp_path, folder, _ = model_setup
    result = recal(folder, "--mean", "0.5,0.5,0.5", "--std", "1e-30,1,1", "-o", tmp_path / "m.pt",
                   "--report", tmp_path / "r.json")
    line = one_line_error(result, 1)
    assert "layer '1'" in line and "not finite" in line and "no statistics written" in line
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("mode", ["train", "sequential"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
def test_the_library_refuses_non_finite_statistics_and_leaves_the_model(bad, mode):
    torch = pytest.importorskip("torch")
    from bnstats.torch import NonFiniteStatisticsError, recalibrate_bn

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = torch.rand(2, 3, 4, 4)
    batch[0, 0, 0, 0] = bad
    with pytest.raises(NonFiniteStatisticsError, match="layer '1'"):
        recalibrate_bn(model, [batch, torch.rand(2, 3, 4, 4)], mode=mode)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0, -3.5, 1e20, 1e38, float("nan"), float("inf"), -float("inf")]),
                min_size=1, max_size=4))
def test_recalibrate_bn_writes_finite_buffers_or_nothing(values):
    """The class of bug: a NaN or infinity reaching a model's buffers. Whatever the inputs, the written
    buffers are finite, or the call raises and the buffers are as they were."""
    torch = pytest.importorskip("torch")
    from bnstats.torch import NonFiniteStatisticsError, recalibrate_bn

    bn = torch.nn.BatchNorm2d(1)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    batch = torch.tensor(values + [0.5] * (4 - len(values)), dtype=torch.float32).view(1, 1, 2, 2)
    try:
        recalibrate_bn(bn, [batch])
    except NonFiniteStatisticsError:
        assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())
    else:
        assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()


def test_recalibrate_says_it_resumes_as_compute_does(model_setup, monkeypatch):
    tmp_path, folder, _ = model_setup
    monkeypatch.setenv("STOP_MARKER", str(tmp_path / "stopped"))
    monkeypatch.setenv("STOP_AT", "2")
    ck = tmp_path / "ck.json"
    first = recal(folder, "-o", tmp_path / "m.pt", "--checkpoint", ck)
    assert first.exit_code == 130 and ck.exists(), first.output
    again = recal(folder, "-o", tmp_path / "m.pt", "--checkpoint", ck)
    assert again.exit_code == 0, again.output
    assert f"bnstats: warning: resuming from {ck}: 2 of 4 files already counted" in again.stderr


def test_weights_of_another_pickle_protocol_are_one_line_without_torchs_warning(model_setup):
    tmp_path, folder, torch = model_setup
    import tinyedge

    torch.save(tinyedge.build().state_dict(), tmp_path / "w.pt", pickle_protocol=4)
    line = one_line_error(recal(folder, "--weights", tmp_path / "w.pt", "--dry-run"), 1)
    assert "pickle protocol 4" in line and "Detected" not in line


# -- bnstats recalibrate: hostile option values, nothing readable --------------------------------------------


BIG = str(10**30)


def test_recalibrate_max_batches_past_any_count_is_all_batches(model_setup):
    tmp_path, folder, _ = model_setup
    assert recal(folder, "--max-batches", BIG, "--dry-run", "-q").exit_code == 0  # was islice's ValueError


def test_recalibrate_resize_past_the_pixel_limit_is_a_usage_error(model_setup):
    tmp_path, folder, _ = model_setup
    assert "BNSTATS_MAX_PIXELS" in one_line_error(recal(folder, "--resize", "100000", "--dry-run"), 2)


@pytest.mark.parametrize("quiet", [(), ("-q",)])
def test_recalibrate_with_nothing_readable_names_the_first_error(model_setup, quiet):
    tmp_path, _, _ = model_setup
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in "ab":
        (bad / f"{name}.png").write_bytes(b"junk")
    result = recal(bad, "--dry-run", *quiet)
    assert result.exit_code == 1
    assert stderr_lines(result)[-1].startswith("Error: none of the 2 images could be read (first: ")
    assert "a.png: " in stderr_lines(result)[-1]
