"""A hostile review of the Python front door: ``bnstats.compute`` of images in memory and
``bnstats.torch.dataset_stats`` given what a user's own code hands it.

Each test is a finding: a shape read the wrong way without a word, a result with no numbers where the
command stops, float pixels in 0..255 reported as unit scale. Numbers are checked against numpy float64.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bnstats  # noqa: E402
from bnstats.api import BnstatsWarning, OptionError  # noqa: E402
from bnstats.inputs.base import NoImagesError  # noqa: E402
from bnstats.torch import dataset_stats  # noqa: E402

RNG = np.random.default_rng(66)


def _rgb(h=8, w=9):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- bnstats.compute: a 3-dimensional array or tensor is (N, H, W) gray images ---------------------------------


@pytest.mark.parametrize("make", [
    lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))),  # one (C, H, W) image tensor
    lambda a: np.ascontiguousarray(a.transpose(2, 0, 1)),  # the same as numpy (tensor.numpy())
    lambda a: a,  # one (H, W, C) numpy image, as Pillow gives it
], ids=["chw-tensor", "chw-array", "hwc-array"])
def test_one_colour_image_given_alone_is_refused_not_counted_as_gray_images(make):
    """Counted as (N, H, W), one RGB image became 3 (or 8) gray images: channels ['L'], every band mixed."""
    with pytest.raises(OptionError, match=r"looks like one \(.*\) image.*array\[None\].*gray images"):
        bnstats.compute(make(_rgb()))


def test_an_ambiguous_batch_is_counted_as_the_remedy_says():
    image = _rgb()
    want = image.reshape(-1, 3).astype(np.float64)
    as_list = bnstats.compute([image]).report  # the remedy for one image: a list of images
    np.testing.assert_allclose(as_list["raw"]["mean"], want.mean(0), rtol=1e-12)
    assert as_list["channels"] == ["R", "G", "B"]
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    assert bnstats.compute(tensor[None]).report["raw"]["mean"] == as_list["raw"]["mean"]
    gray = bnstats.compute(image[..., None]).report  # the remedy for (N, H, W) gray images 3 wide
    assert gray["channels"] == ["L"] and gray["images"] == 8
    np.testing.assert_allclose(gray["raw"]["mean"], [want.mean()], rtol=1e-12)


@pytest.mark.parametrize("shape", [(60, 28, 28), (1, 5, 6), (4, 4, 3), (7, 5, 6)])
def test_gray_batches_that_look_like_no_colour_image_are_still_counted(shape):
    data = RNG.integers(0, 256, shape, dtype=np.uint8)
    for given in (data, torch.from_numpy(data)):
        report = bnstats.compute(given).report
        assert report["channels"] == ["L"] and report["images"] == shape[0]
        np.testing.assert_allclose(report["raw"]["mean"], [data.astype(np.float64).mean()], rtol=1e-12)


# -- dataset_stats: nothing counted is an error, as for bnstats compute ----------------------------------------


@pytest.mark.parametrize("items", [[], [torch.zeros((3, 0, 5), dtype=torch.uint8)],
                                   [torch.full((1, 2, 2), float("nan"))]], ids=["empty", "no-pixels", "all-nan"])
def test_a_dataset_that_yields_no_pixel_raises_instead_of_a_result_without_numbers(items):
    """The result had mean [] or [None]: Normalize(mean=[]) fails far from here, or not at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NoImagesError, match="no "):
            dataset_stats(items, num_workers=0)


# -- dataset_stats: float pixels in 0..255 are not unit scale ----------------------------------------------------


def test_float_pixels_in_0_255_are_counted_as_they_are_and_said_to_be_no_unit_scale():
    images = [torch.from_numpy(np.ascontiguousarray(_rgb().transpose(2, 0, 1))) for _ in range(3)]
    with pytest.warns(UserWarning, match=r"0\.\.255 \(largest.*not unit scale"):
        as_floats = dataset_stats([t.float() for t in images], num_workers=0)
    whole = np.concatenate([t.numpy().reshape(3, -1) for t in images], axis=1).astype(np.float64)
    np.testing.assert_allclose(as_floats["mean"], whole.mean(1), rtol=1e-12)  # the values as yielded
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0..1 floats, and the uint8 tensors themselves: no word
        dataset_stats([t.float() / 255 for t in images], num_workers=0)
        dataset_stats(images, num_workers=0)
        dataset_stats([t.float() - 128 for t in images], num_workers=0)  # centred data: not 0..255 pixels
        dataset_stats([t.float() / 25 for t in images], num_workers=0)  # small measurements (0..10.2)


def test_a_channels_first_tensor_of_more_than_four_channels_is_noted():
    """A (B, H, W) batch of gray images looks like one B-channel image: counted so, and said."""
    with pytest.warns(UserWarning, match=r"more than 4 channels .* \(N, 1, H, W\)"):
        report = dataset_stats([torch.zeros((16, 6, 6), dtype=torch.uint8)], num_workers=0)
    assert len(report["channels"]) == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset_stats([torch.zeros((3, 6, 6), dtype=torch.uint8)], num_workers=0)


@pytest.mark.parametrize("make, axis", [
    (lambda a: np.ascontiguousarray(a.transpose(2, 0, 1)), 1),  # a (C, H, W) numpy item: was W channels
    (lambda a: torch.from_numpy(a), 3),  # an (H, W, C) tensor item: was H channels
], ids=["chw-array-item", "hwc-tensor-item"])
def test_an_item_laid_out_the_other_way_is_refused_and_the_axis_named_is_right(make, axis):
    image = _rgb()
    with pytest.raises(OptionError, match=f"channel_axis={axis}"):
        bnstats.compute([make(image)])
    report = bnstats.compute([make(image)], channel_axis=axis).report
    assert report["channels"] == ["R", "G", "B"]
    np.testing.assert_allclose(report["raw"]["mean"], image.reshape(-1, 3).astype(np.float64).mean(0), rtol=1e-12)


def test_a_dataset_of_16bit_colour_pillow_images_says_they_are_8_bits(tmp_path):
    """PIL items count in native mode: a 16-bit colour file opened by Pillow is 8 bits, and now it is said."""
    cv2 = pytest.importorskip("cv2")
    from PIL import Image

    cv2.imwrite(str(tmp_path / "c16.png"), RNG.integers(0, 65536, (5, 6, 3)).astype(np.uint16))
    with pytest.warns(UserWarning, match="16-bit colour file holds it as 8 bits"):
        report = dataset_stats([Image.open(tmp_path / "c16.png")], num_workers=0)
    assert report["max_value"] == 255
    np.testing.assert_allclose(report["raw"]["mean"], np.asarray(Image.open(tmp_path / "c16.png")).reshape(
        -1, 3).astype(np.float64).mean(0), rtol=1e-12)


# -- RunningStats, the building block: what is no pixel data is refused ----------------------------------------


@pytest.mark.parametrize("values", [np.array([[1 + 5j, 3]]), np.array([["1", "2"]]), np.array([[None, 3]]),
                                    [["7", "9"]]], ids=["complex", "str", "object", "list-of-str"])
def test_running_stats_refuses_what_is_no_pixel_data(values):
    """Complex values lost their imaginary part (a numpy warning at most), strings were parsed as numbers and
    None became NaN: counted without a word."""
    from bnstats import RunningStats

    stats = RunningStats()
    with pytest.raises(ValueError, match="cannot be counted"):
        stats.update(values)
    stats.update(np.array([[True, False]]))  # booleans are pixels (0 and 1), as for arrays given to compute
    stats.update(np.array([[2, 4]], np.int64))
    assert stats.result()["raw_mean"] == [pytest.approx(7 / 4)]


def test_pillow_images_made_in_memory_are_counted_in_native_mode_without_a_word():
    """Image.new() and Image.fromarray() images have no decoder to ask about 16 bits (no ``tile``)."""
    from PIL import Image

    images = [Image.new("RGB", (3, 2), (1, 2, 3)), Image.fromarray(_rgb())]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bnstats.compute(images, mode="native").report["images"] == 2
        assert dataset_stats(images, num_workers=0)["images"] == 2


def test_bfloat16_tensors_are_counted_as_their_float_values():
    """Mixed-precision code holds bfloat16 tensors, which numpy has no type for: bnstats.compute raised torch's
    'Got unsupported ScalarType BFloat16' (dataset_stats widened them already). Widening to float32 is exact."""
    batch = (torch.rand(2, 3, 4, 4) * 2 - 1).to(torch.bfloat16)
    want = batch.float().permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    for given in (batch, list(batch)):
        report = bnstats.compute(given).report
        np.testing.assert_allclose(report["raw"]["mean"], want.mean(0), rtol=1e-12)
        assert report["channels"] == ["R", "G", "B"]
    np.testing.assert_allclose(dataset_stats(list(batch), num_workers=0)["raw"]["mean"], want.mean(0), rtol=1e-12)


def test_rows_of_pixels_are_counted_with_the_channel_axis_the_refusal_names():
    series = RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8)  # 6 rows of 9 pixels of 3 channels
    with pytest.raises(OptionError, match="channel_axis=2 for 6 rows of pixels of 3 channels"):
        bnstats.compute(series)
    report = bnstats.compute(series, channel_axis=2).report
    assert report["channels"] == ["R", "G", "B"] and report["images"] == 6
    np.testing.assert_allclose(report["raw"]["mean"], series.reshape(-1, 3).astype(np.float64).mean(0), rtol=1e-12)


@pytest.mark.parametrize("given, keys", [("50", ["50"]), ("1,99", ["1", "99"]), (" 5 , 95 ", ["5", "95"]),
                                         (50, ["50"]), (["1", 99], ["1", "99"])])
def test_dataset_stats_reads_percentiles_given_as_text_as_the_command_line_does(given, keys):
    """percentiles="50" was iterated character by character: the 5th and 0th percentiles, without a word."""
    image = torch.from_numpy(np.arange(100, dtype=np.uint8).reshape(1, 10, 10))
    report = dataset_stats([image], num_workers=0, percentiles=given)
    assert sorted(report["percentiles"], key=float) == keys
    by_cli = bnstats.compute([image], percentiles=given).report["percentiles"]
    assert report["percentiles"] == by_cli


def test_bnstats_compute_of_float_pixels_in_0_255_says_they_are_not_unit_scale():
    """result.mean is 'unit scale (as the JSON's top level)': for uint8 pixels made float it was 0..255."""
    pixels = RNG.integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    with pytest.warns(BnstatsWarning, match=r"0\.\.255 \(largest.*not unit scale"):
        as_floats = bnstats.compute(pixels.astype(np.float32))
    np.testing.assert_allclose(as_floats.mean, pixels.reshape(-1, 3).astype(np.float64).mean(0), rtol=1e-12)
    with pytest.warns(BnstatsWarning, match="not unit scale"):
        bnstats.compute([torch.from_numpy(np.ascontiguousarray(p.transpose(2, 0, 1))).float() for p in pixels])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnstats.compute(pixels)  # uint8: unit scale, no word
        bnstats.compute(pixels.astype(np.float32) / 255)


def test_a_dataset_or_its_items_given_to_compute_point_to_dataset_stats():
    from torch.utils.data import DataLoader, TensorDataset

    dataset = TensorDataset(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.zeros(8))
    for given in (dataset, DataLoader(dataset, batch_size=4), [(dataset[0][0], 1)], [{"image": dataset[0][0]}]):
        with pytest.raises(TypeError, match=r"bnstats\.torch\.dataset_stats"):
            bnstats.compute(given)
    assert dataset_stats(dataset, num_workers=0)["images"] == 8


def test_by_label_with_a_label_per_item_is_refused_before_it_takes_memory_without_bound(monkeypatch):
    """(image, index) items with by_label=True kept a 16-bit histogram state (1.5 MiB for RGB) per item: a
    dataset of 100,000 such items asked for 150 GB. The bound is scaled down here: 3 labels' states."""
    from bnstats.torch import dataset as module

    monkeypatch.setattr(module, "GROUP_BYTES", 3 * 3 * 65536 * 8)
    items = [(torch.full((3, 2, 2), i, dtype=torch.uint16), i) for i in range(5)]
    with pytest.raises(ValueError, match=r"by_label keeps one state per label, and 4 labels hold .*item's id"):
        dataset_stats(items, num_workers=0, by_label=True, batch_size=2)
    assert len(dataset_stats(items[:3], num_workers=0, by_label=True)["groups"]) == 3
