"""Hostile models and loaders for BatchNorm recalibration, checked against what PyTorch itself does.

The reference: the model in training mode (every other module in eval
mode), its BatchNorm layers reset with ``momentum=None``, run over the same
batches — PyTorch's cumulative average of the batch means and unbiased batch
variances, which ``variance="batch"`` writes.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from helpers import cli
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnstats import torch as bt


def torch_reference(model: nn.Module, batches) -> nn.Module:
    """A copy of ``model`` after PyTorch's own cumulative (momentum=None) training-mode pass over ``batches``."""
    model = copy.deepcopy(model)
    for module in model.modules():
        module.training = isinstance(module, _BatchNorm)  # not .eval(): it would reach the BN children
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    return model


def models():
    torch.manual_seed(0)
    images = [torch.randn(4, 3, 6, 6) * 2 + 1 for _ in range(3)]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(10, 3, 6, 6), torch.zeros(10)),
                                         batch_size=4, drop_last=True)
    conv = lambda norm: nn.Sequential(nn.Conv2d(3, 4, 3), norm, nn.ReLU(), nn.Conv2d(4, 4, 1),
                                      nn.BatchNorm2d(4, momentum=None))
    return {
        "2d, momentum 0.1 and None": (conv(nn.BatchNorm2d(4)), images),
        "2d, batches of one image": (conv(nn.BatchNorm2d(4)), [torch.randn(1, 3, 6, 6) for _ in range(3)]),
        "GroupNorm left alone": (conv(nn.GroupNorm(2, 4)), images),
        "SyncBatchNorm": (conv(nn.SyncBatchNorm(4)), images),
        "a DataLoader with drop_last": (conv(nn.BatchNorm2d(4)), loader),
        "1d, an untracked layer, LayerNorm": (
            nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.BatchNorm1d(6, track_running_stats=False),
                          nn.LayerNorm(6), nn.BatchNorm1d(6)), [(torch.randn(7, 5), torch.zeros(7)) for _ in range(3)]),
        "3d": (nn.Sequential(nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3)), [torch.randn(2, 2, 3, 4, 5) for _ in range(3)]),
        "float64": (conv(nn.BatchNorm2d(4)).double(), [x.double() for x in images]),
        "frozen (requires_grad False)": (conv(nn.BatchNorm2d(4)).requires_grad_(False), images),
        "InstanceNorm with running stats left alone": (conv(nn.InstanceNorm2d(4, track_running_stats=True)), images),
    }


@pytest.mark.parametrize("case", list(models()))
def test_batch_variance_writes_what_pytorch_momentum_none_writes(case):
    """Every buffer as PyTorch's own pass leaves it (num_batches_tracked too); every parameter, every other
    buffer (an untracked layer, GroupNorm, LayerNorm) and every training flag left as it was."""
    model, batches = models()[case]
    model.train()
    model[0].training = False  # a mix of flags, to be restored as they were
    flags = [m.training for m in model.modules()]
    want = torch_reference(model, batches).state_dict()
    params = {k: v.clone().requires_grad_(v.requires_grad) for k, v in model.named_parameters()}
    bt.recalibrate_bn(model, batches, variance="batch")
    got = model.state_dict()
    assert list(got) == list(want)
    tol = 1e-12 if case == "float64" else 1e-6
    for key in want:
        if key.endswith("num_batches_tracked"):
            assert got[key].item() == want[key].item(), key
        else:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=tol, msg=key)
    assert {bn.num_batches_tracked.item() for bn in bt.bn_layers(model).values()} == {2 if "drop_last" in case else 3}
    assert all(torch.equal(params[k], v) and v.requires_grad == params[k].requires_grad
               for k, v in model.named_parameters())
    assert [m.training for m in model.modules()] == flags


class AuxiliaryHead(nn.Module):
    """A model whose second BatchNorm runs only in training mode (as Inception's auxiliary classifier)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.aux = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))

    def forward(self, x):
        x = self.body(x)
        return (x, self.aux(x)) if self.training else x


@pytest.mark.parametrize("mode", ["train", "sequential"])
def test_a_layer_no_batch_reaches_is_named_and_left_as_it_was(mode):
    """Inception v3's auxiliary head runs only in training mode: its layers were refused (the whole model
    could not be recalibrated), and before that unnamed. They are left as they were, named in a warning and
    in the report; every other layer is written as PyTorch's own pass writes it."""
    torch.manual_seed(0)
    model = AuxiliaryHead()
    before = copy.deepcopy(model.state_dict())
    batches = [torch.randn(2, 3, 6, 6) for _ in range(2)]
    want = torch_reference(model, batches)
    with pytest.warns(UserWarning, match=r"BatchNorm layer\(s\) 'aux.1' .*auxiliary head\): left as they were"):
        report = bt.recalibrate_bn(model, batches, mode=mode, variance="batch")
    assert report["aux.1"]["n"] == 0 and "left" in report["aux.1"]
    assert report["aux.1"]["written"] == report["aux.1"]["before"]
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(model.state_dict()[f"aux.1.{key}"], before[f"aux.1.{key}"])
    torch.testing.assert_close(model.body[1].running_var, want.body[1].running_var)
    assert report["body.1"]["n"] == 2 * 4 * 4 * 2
    assert "aux.1" in bt.audit_table(report) and bt.report_json(report)
    with pytest.warns(UserWarning, match="'aux.1'"):
        assert set(bt.layer_stats(model, batches, mode=mode)) == {"body.1"}
    assert model.training


def test_no_batches_at_all_says_so():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="no batch reached the BatchNorm layers"):
        bt.recalibrate_bn(model, [])


def test_a_model_on_the_meta_device_is_refused_before_any_batch():
    """It failed after a whole pass, with torch's 'Cannot copy out of meta tensor' (in the CLI: 'the model
    failed on a batch')."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    read = []
    batches = (read.append(i) or torch.randn(2, 3, 4, 4) for i in range(3))
    for count in (bt.recalibrate_bn, bt.layer_stats):
        with pytest.raises(ValueError, match="'meta' device.*to_empty"):
            count(model, batches)
    assert read == []


def test_an_uninitialized_lazy_layer_is_named():
    """It was torch's many-line 'Attempted to use an uninitialized parameter in <method 'clone'...'."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.LazyBatchNorm2d())
    with pytest.raises(ValueError, match="layer '1' is a lazy module not initialized yet"):
        bt.recalibrate_bn(model, [torch.randn(2, 3, 4, 4)])
    model(torch.randn(2, 3, 4, 4))  # initialized: it counts
    assert bt.recalibrate_bn(model, [torch.randn(2, 3, 4, 4)])["1"]["n"] == 32


def test_cli_a_model_with_an_unreached_layer_warns_in_one_line(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "auxmodels.py").write_text(
        "from test_torch_attacks import AuxiliaryHead\n\ndef build():\n    return AuxiliaryHead()\n")
    monkeypatch.chdir(tmp_path)
    result = cli("recalibrate", "--model", "auxmodels:build", "images", "--batch-size", "2", "--dry-run")
    warning = [line for line in result.stderr.splitlines() if "no batch reached" in line]
    assert warning == ["bnstats: warning: no batch reached BatchNorm layer(s) 'aux.1' (a branch the model's "
                       "forward skips in eval mode, such as an auxiliary head): left as they were"], result.stderr
    assert "Traceback" not in result.stderr and "aux.1" in result.stdout


class Quiet:
    def warn(self, message):
        pass

    def advance(self, done):
        pass


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_normalized_then_rounded_once(dtype, tmp_path):
    """Scaling and normalizing in the model's dtype rounded at every step: in bfloat16 3/4 of the inputs
    differed from the float32 pipeline's cast (ToTensor, Normalize, .to(dtype)), their mean by +0.005."""
    from PIL import Image

    from bnstats.decoding.options import DecodeOptions
    from bnstats.inputs.select import select
    from bnstats.torch.batches import ImageBatches

    rng = np.random.default_rng(2)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

    def batch(as_dtype):
        return next(iter(ImageBatches(select([str(tmp_path)]), DecodeOptions(), 4, mean, std, as_dtype, Quiet(),
                                      False)))

    got = batch(dtype)
    assert got.dtype == dtype
    assert torch.equal(got, batch(torch.float32).to(dtype))
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(tmp_path / f"{i}.png")) for i in range(4)]))
    want = ((pixels.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1))
            / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.equal(got, want.to(dtype))


def linear_bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 3), nn.BatchNorm1d(3))


def test_precise_bn_variance_of_batches_of_one_value_is_refused_not_zero():
    """Sequential mode counts in eval mode, so a batch of one value per channel (a DataLoader's last batch of
    one sample into BatchNorm1d) went in as a batch variance of 0: variance='batch' wrote running_var 0 (and
    too low with a partial last batch), which PyTorch refuses to compute in training."""
    model = linear_bn()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"layer '1': 1 batch\(es\) held one value per channel.*population"):
        bt.recalibrate_bn(model, [torch.randn(3, 4), torch.randn(1, 4)], mode="sequential", variance="batch")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):  # train mode: PyTorch's words
        bt.recalibrate_bn(model, [torch.randn(3, 4), torch.randn(1, 4)], variance="batch")


def test_population_statistics_of_batches_of_one_value_are_written_and_precise_bn_is_nan():
    model = linear_bn()
    data = [torch.randn(1, 4) for _ in range(5)]
    x = torch.cat(data)
    with torch.no_grad():
        want = model[0](x).double()
    report = bt.recalibrate_bn(model, data, mode="sequential")
    torch.testing.assert_close(model[1].running_var.double(), want.var(dim=0), rtol=1e-6, atol=0)
    layer = report["1"]
    assert all(math.isnan(v) for v in layer["precise_bn"]["var"])  # NaN: none, not 0
    assert math.isnan(layer["distance"]["precise_bn"]["var"]["max_abs"])
    stats = bt.layer_stats(model, data, mode="sequential")["1"]
    assert stats["single_batches"] == 5 and all(math.isnan(v) for v in stats["batch_var"])


def test_a_layer_state_with_single_batches_round_trips_and_is_checked():
    from bnstats.torch.moments import Moments, Scratch

    state = Moments()
    for x in (torch.randn(3, 2), torch.randn(1, 2)):
        state.add_batch(x, Scratch())
    saved = state.to_dict()
    assert saved["singles"] == 1
    assert Moments.from_dict(saved, "cpu", 2).result()["single_batches"] == 1
    with pytest.raises(ValueError, match="agree"):
        Moments.from_dict({**saved, "singles": 3}, "cpu", 2)
    packed = Moments.unpack(state.pack(2, "cpu"), 2)
    assert packed.singles == 1 and packed.result()["batch_mean"] == state.result()["batch_mean"]


META_MODELS = '''
import torch
from torch import nn


def real():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def meta():
    with torch.device("meta"):
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
'''


def test_cli_a_model_built_on_the_meta_device_takes_its_weights(tmp_path, monkeypatch):
    """--weights into a model built on 'meta' was a no-op (torch's seven UserWarnings), then a failure."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(4)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "metamodels.py").write_text(META_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import metamodels

    torch.save(metamodels.real().state_dict(), tmp_path / "w.pt")
    reports = {}
    for factory in ("real", "meta"):
        result = cli("recalibrate", "--model", f"metamodels:{factory}", "--weights", "w.pt", "images",
                     "--batch-size", "2", "--dry-run", "--report", f"{factory}.json", "-q", expect=0)
        assert result.stderr == ""
        reports[factory] = (tmp_path / f"{factory}.json").read_text()
    assert reports["meta"] == reports["real"]
    result = cli("recalibrate", "--model", "metamodels:meta", "images", "--batch-size", "2", "--dry-run", expect=1)
    assert result.stderr.strip() == ("Error: --model metamodels:meta is on the 'meta' device (shapes, no values): "
                                     "give --weights holding every parameter and buffer")


# -- the simulated BatchNorm layer of --bn-momentum, against PyTorch's own ----------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3)), min_size=1, max_size=9),
       st.integers(1, 4), st.one_of(st.none(), st.floats(0.01, 1.0)), st.integers(0, 2**32 - 1))
def test_the_simulated_batchnorm_layer_holds_what_pytorch_s_holds(sizes, batch_size, momentum, seed):
    """--bn-momentum's tracker, fed 8-bit images of any sizes in batches of any size (a smaller last one), holds
    torch.nn.BatchNorm2d's running buffers (float64, training mode) after the same batches, for any momentum
    and the cumulative average; num_batches_tracked too. A batch of one value per channel, which PyTorch
    refuses in training, is not a step (it once moved running_var towards a variance of 0)."""
    from bnstats.observers.batchnorm import BatchNormTracker
    from bnstats.statistics.states import ExactMoments

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    steps = [batch for batch in batches if sum(im.shape[0] * im.shape[1] for im in batch) > 1]
    tracker = BatchNormTracker(batch_size, momentum)
    for image in images:
        counts = np.stack([np.bincount(image[..., c].ravel(), minlength=256) for c in range(3)])
        tracker.add(ExactMoments.of_histogram(counts), 255)
    tracker.finish()
    layer = nn.BatchNorm1d(3, momentum=momentum, affine=False, dtype=torch.float64)  # (values, C): any sizes
    for batch in steps:
        layer(torch.from_numpy(np.concatenate([im.reshape(-1, 3) for im in batch]).astype(np.float64) / 255))
    result = tracker.result()
    assert result["num_batches_tracked"] == layer.num_batches_tracked.item() == len(steps)
    everything = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255
    np.testing.assert_allclose(result["exact_mean"], everything.mean(axis=0), rtol=1e-12)
    if not steps:
        assert result["running_mean"] is None
        return
    np.testing.assert_allclose(result["running_mean"], layer.running_mean.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(result["running_var"], layer.running_var.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variance", ["population", "batch"])
def test_a_layer_that_saw_one_value_per_channel_in_all_is_refused(variance):
    """Sequential mode over one sample into BatchNorm1d: running_var 0 was written (an unbiased variance of
    one value does not exist; the layer would then divide by sqrt(eps))."""
    model = linear_bn()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="layer '1' saw one value per channel in all"):
        bt.recalibrate_bn(model, [torch.randn(1, 4)], mode="sequential", variance=variance)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _KeywordCall(nn.Module):
    """A model that calls its BatchNorm layer with a keyword: ``bn(input=x)``."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(input=self.conv(x))


def test_a_layer_called_with_its_input_as_a_keyword_is_recalibrated():
    """``bn(input=x)`` reached the pre-hook with no positional argument: an IndexError from inside the hook
    (in the CLI 'the model failed on a batch'). The hook takes the keyword too, and writes what PyTorch does."""
    torch.manual_seed(0)
    model, batches = _KeywordCall(), [torch.randn(4, 3, 8, 8) for _ in range(3)]
    want = torch_reference(model, batches)
    bt.recalibrate_bn(model, batches, variance="batch")
    torch.testing.assert_close(model.bn.running_mean, want.bn.running_mean)
    torch.testing.assert_close(model.bn.running_var, want.bn.running_var)
    assert int(model.bn.num_batches_tracked) == int(want.bn.num_batches_tracked)
