"""--bn-momentum / --batch-size: what a BatchNorm layer would hold."""

import json

import numpy as np
import pytest
from PIL import Image

from bnstats.observers.batchnorm import BatchNormTracker
from bnstats.running.count import image_moments
from bnstats.decoding.decode import decode_array
from bnstats.statistics.states import ExactMoments
from helpers import cli, cli_json
from helpers import iter_image_paths
from reference import batchnorm_buffers

SIZE = 24


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bn")
    rng = np.random.default_rng(7)
    for i in range(23):  # 23 images: batches of 5 leave a partial last batch
        base = rng.integers(0, 200, 3)
        pixels = (base + rng.integers(0, 56, (SIZE + i % 3, SIZE, 3))).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i:02d}.png")
    (root / "zz_broken.png").write_bytes(b"not a png")
    return root


def run(folder, *args):
    return cli_json("compute", folder, "-q", *args)


@pytest.mark.parametrize("momentum,arg", [(0.1, "0.1"), (None, "cumulative"), (0.5, "0.5")])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_matches_pytorch_batchnorm_semantics(folder, momentum, arg, workers):
    images = [np.asarray(Image.open(p).convert("RGB")) for p in iter_image_paths([folder]) if "broken" not in p]
    batches = [images[i : i + 5] for i in range(0, len(images), 5)]
    want_mean, want_var = batchnorm_buffers(batches, momentum)
    bn = run(folder, "-j", workers, "--batch-size", "5", "--bn-momentum", arg)["bn"]
    assert bn["num_batches_tracked"] == 5
    assert bn["batch_size"] == 5
    assert bn["momentum"] == (momentum if momentum is not None else "cumulative")
    np.testing.assert_allclose(bn["running_mean"], want_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bn["running_var"], want_var, rtol=0, atol=1e-12)


def test_batch_size_alone_is_a_usage_error(folder):
    """--batch-size without --bn-momentum once turned the simulation on silently."""
    result = cli("compute", folder, "-q", "--batch-size", "4")
    assert result.exit_code == 2 and "--bn-momentum" in result.output
    assert "bn" not in run(folder)


def test_cumulative_with_equal_batches_is_mean_of_batch_means(folder):
    bn = run(folder, "--resize", "8x8", "--batch-size", "1", "--bn-momentum", "cumulative")["bn"]
    plain = run(folder, "--resize", "8x8")
    np.testing.assert_allclose(bn["running_mean"], plain["mean"], atol=1e-12)


def test_float_images_use_chan_merge():
    """Float pixels (max_value 1) in batches of 3, the last one partial."""
    rng = np.random.default_rng(1)
    images = [rng.normal(5, 2, (4 + i, 3, 2)) for i in range(7)]
    tracker = BatchNormTracker(3, momentum=0.2)
    for im in images:
        tracker.add(image_moments(decode_array(im)), 1)
    tracker.finish()
    running_mean, running_var = batchnorm_buffers([images[i : i + 3] for i in range(0, 7, 3)], 0.2, max_value=1)
    np.testing.assert_allclose(tracker.result()["running_mean"], running_mean, atol=1e-12)
    np.testing.assert_allclose(tracker.result()["running_var"], running_var, atol=1e-12)


def test_state_round_trips_mid_batch():
    rng = np.random.default_rng(2)
    counts = [np.stack([np.bincount(rng.integers(0, 256, 50), minlength=256)] * 3) for _ in range(9)]
    whole = BatchNormTracker(4, 0.1)
    part = BatchNormTracker(4, 0.1)
    for c in counts[:6]:
        whole.add(ExactMoments.of_histogram(c), 255)
        part.add(ExactMoments.of_histogram(c), 255)
    part = BatchNormTracker.from_dict(json.loads(json.dumps(part.to_dict())))
    for c in counts[6:]:
        whole.add(ExactMoments.of_histogram(c), 255)
        part.add(ExactMoments.of_histogram(c), 255)
    whole.finish()
    part.finish()
    assert whole.result() == part.result()


@pytest.mark.parametrize("args", [["--bn-momentum", "0.1"], ["--batch-size", "4", "--bn-momentum", "2"],
                                  ["--batch-size", "0"], ["--batch-size", "4", "--scheduler", "tcp://127.0.0.1:1"]])
def test_usage_errors(folder, args):
    cli("compute", folder, "-q", *args, expect=2)  # helpers.cli: never a traceback

