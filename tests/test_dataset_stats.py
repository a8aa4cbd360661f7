"""bnstats.torch.dataset_stats: the statistics of what a PyTorch Dataset (or a Hugging Face one) yields.

Checked against numpy float64 on the concatenated outputs, against ``bnstats compute`` on the same pixels
(every statistic, byte for byte), for invariance under batch size and worker count, and for its one-line
refusals of items it cannot count.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset, IterableDataset  # noqa: E402

from bnstats.torch import dataset_stats  # noqa: E402
from helpers import cli, cli_json  # noqa: E402
from reference import assert_report_matches, full_load  # noqa: E402

# what depends on how the pixels were found (files, settings), not on the pixels
NOT_STATISTICS = ("settings", "files", "bnstats_version")


class Images(Dataset):
    """A map-style Dataset of the given items (what a user's __getitem__ returns)."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


class Stream(IterableDataset):
    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


class Files(Dataset):
    """An ImageFolder-like Dataset: PIL loads, converts to RGB, PILToTensor's uint8 (C, H, W); label: the folder."""

    def __init__(self, files):
        self.files = files
        self.classes = sorted({f.parent.name for f in files})

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path = self.files[index]
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1), self.classes.index(path.parent.name)


def statistics_part(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in NOT_STATISTICS}


def hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy() if tensor.ndim == 3 else tensor.numpy()[..., None]


def random_images(dtype, channels, sizes, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        shape = (channels, h, w) if channels else (h, w)
        if np.dtype(dtype).kind == "f":
            out.append(torch.from_numpy(rng.normal(0.3, 2.0, shape).astype(dtype)))
        else:
            out.append(torch.from_numpy(rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)))
    return out


SIZES = [(5, 7), (9, 4), (1, 1), (6, 6), (3, 11)]  # images of different sizes: a list batch, not a stack


# -- against bnstats compute ------------------------------------------------------------------------


def test_the_same_as_bnstats_compute_on_the_decoded_files(sample_data, sample_files):
    """A Dataset yielding exactly the decoded images reports what ``bnstats compute`` does, key for key."""
    ours = dataset_stats(Files(sample_files), num_workers=0, batch_size=5, percentiles=["1", "99"], by_label=True)
    theirs = cli_json("compute", sample_data, "--mode", "rgb", "--percentiles", "1,99", "--group-by", "class")
    assert json.dumps(statistics_part(ours)) == json.dumps(statistics_part(theirs))
    assert ours["settings"]["mode"] == "native"  # the pixels as the dataset yields them


def test_a_report_other_commands_read(sample_files, tmp_path):
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(dataset_stats(Files(sample_files[:4]), num_workers=0)))
    out = cli("export", path, "--format", "torchvision", expect=0).stdout
    assert "Normalize" in out


# -- against numpy on the concatenated outputs -------------------------------------------------------


@pytest.mark.parametrize("dtype, channels", [(np.uint8, 3), (np.uint8, 0), (np.uint16, 1), (np.uint16, 3),
                                             (np.int16, 2), (np.float32, 3), (np.float64, 0)])
def test_equal_to_numpy_on_the_concatenated_tensors(dtype, channels):
    images = random_images(dtype, channels, SIZES)
    report = dataset_stats(Images(images), num_workers=0, batch_size=2)
    ref_dtype = np.float64 if np.dtype(dtype).kind in "fi" else dtype  # signed: raw units, as floats
    ref = full_load(hwc(t).astype(ref_dtype) for t in images)
    assert_report_matches(report, ref, tol=1e-12)
    assert report["channels"] == {1: ["L"], 2: ["B1", "B2"], 3: ["R", "G", "B"]}[max(channels, 1)]


def test_pil_images_and_numpy_arrays_are_counted_as_stored(sample_files):
    pil = [Image.open(f) for f in sample_files[:6]]
    arrays = [np.asarray(img.convert("RGB")) for img in pil]
    ref = full_load(arrays)
    assert_report_matches(dataset_stats([img.convert("RGB") for img in pil], num_workers=0), ref, tol=1e-12)
    assert_report_matches(dataset_stats(arrays, num_workers=0), ref, tol=1e-12)
    gray16 = [Image.fromarray(np.full((3, 4), v, np.uint16)) for v in (0, 1000, 65535)]
    report = dataset_stats(gray16, num_workers=0)
    assert report["max_value"] == 65535 and report["raw"]["max"] == [65535.0]


def test_a_batch_item_is_its_images():
    images = random_images(np.uint8, 3, [(4, 5)] * 6)
    one_by_one = dataset_stats(images, num_workers=0)
    batches = [(torch.stack(images[:4]), torch.arange(4)), (torch.stack(images[4:]), torch.arange(2))]
    assert dataset_stats(iter(batches), num_workers=0)["state"] == one_by_one["state"]
    nhwc = [np.stack([hwc(t) for t in images])]
    assert dataset_stats(nhwc, num_workers=0)["state"] == one_by_one["state"]


def test_non_finite_floats_are_left_out_with_a_warning():
    image = torch.tensor([[[1.0, float("nan")], [3.0, float("inf")]]])
    with pytest.warns(UserWarning, match="NaN or infinite"):
        report = dataset_stats([image], num_workers=0)
    assert report["pixels"] == 2 and report["raw"]["mean"] == [2.0]


# -- invariance ----------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 7), st.integers(1, 7))
def test_integer_results_do_not_depend_on_the_batch_size(a, b):
    images = random_images(np.uint16, 3, SIZES * 2, seed=3)
    first = dataset_stats(Images(images), num_workers=0, batch_size=a)
    assert dataset_stats(Images(images), num_workers=0, batch_size=b) == first


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_workers_give_the_same_bits(dtype):  # two forked workers: about 0.1 s
    images = random_images(dtype, 3, SIZES * 3, seed=5)
    alone = dataset_stats(Images(images), num_workers=0, batch_size=3)
    assert dataset_stats(Images(images), num_workers=2, batch_size=3) == alone
    loader = DataLoader(Images(images), batch_size=3, num_workers=2)
    assert dataset_stats(loader) == alone


def test_a_dataloader_is_read_as_its_dataset_sampler_and_batches():
    images = random_images(np.uint8, 3, [(4, 4)] * 5)
    labelled = Images([(t, i % 2) for i, t in enumerate(images)])
    report = dataset_stats(DataLoader(labelled, batch_size=2), by_label=True)
    assert report == dataset_stats(labelled, num_workers=0, batch_size=2, by_label=True)
    assert sorted(report["groups"]) == ["0", "1"] and report["groups"]["1"]["images"] == 2


def test_a_dataloader_whose_collate_may_change_pixels_is_refused():
    loader = DataLoader(Images(random_images(np.uint8, 3, [(2, 2)] * 2)), batch_size=2,
                        collate_fn=lambda items: torch.stack(items) * 0)
    with pytest.raises(ValueError, match=r"collate_fn .* may change pixels.*batch for batch in loader"):
        dataset_stats(loader)


def test_an_iterable_dataset_and_a_generator():
    images = random_images(np.uint8, 1, SIZES)
    ref = dataset_stats(images, num_workers=0)
    assert dataset_stats(Stream(images), num_workers=0, batch_size=2) == ref
    assert dataset_stats((t for t in images), batch_size=3) == ref


# -- Hugging Face datasets (duck-typed) -----------------------------------------------------------------


class ClassLabel:
    def __init__(self, names):
        self.names = names


class HubDataset:
    """What a ``datasets.Dataset`` with an Image and a ClassLabel column offers: rows as dicts, features, format.

    As datasets 5.2.0 does (dataset_stats was run on it by hand: the same state in every format)."""

    def __init__(self, rows, names, fmt=None):
        self.rows, self.features, self.format = rows, {"label": ClassLabel(names)}, {"type": fmt}

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        pixels = np.asarray(row["img"])
        if self.format["type"] == "torch":  # datasets (5.2) gives images as (C, H, W) tensors, labels as tensors
            return {"img": torch.from_numpy(pixels.copy()).permute(2, 0, 1), "label": torch.tensor(row["label"])}
        if self.format["type"] == "numpy":  # and as (H, W, C) arrays
            return {"img": pixels, "label": np.int64(row["label"])}
        return row


def test_a_hugging_face_dataset_by_its_image_column(sample_files):
    rows = [{"img": Image.open(f).convert("RGB"), "label": i % 3} for i, f in enumerate(sample_files[:6])]
    ref = full_load(np.asarray(r["img"]) for r in rows)
    for fmt in (None, "torch", "numpy"):
        report = dataset_stats(HubDataset(rows, ["a", "b", "c"], fmt), num_workers=0, column="img", by_label=True)
        assert_report_matches(report, ref, tol=1e-12)
        assert sorted(report["groups"]) == ["a", "b", "c"]
    with pytest.raises(TypeError, match=r"^item 0 is a dict without the column 'image' \(its keys: img, label\)"):
        dataset_stats(HubDataset(rows, ["a", "b", "c"]), num_workers=0)


# -- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [Images, Stream, list])
def test_an_item_of_another_type_is_a_type_error_naming_it_and_its_index(make):
    items = random_images(np.uint8, 3, [(2, 2)] * 5)
    items[3] = "cat.jpg"
    with pytest.raises(TypeError) as caught:
        dataset_stats(make(items), num_workers=0, batch_size=2)
    assert str(caught.value).startswith("item 3 is a builtins.str: dataset_stats counts PIL images")
    assert "\n" not in str(caught.value)


def test_shapes_that_would_count_the_wrong_axis_are_refused():
    hwc_tensor = torch.zeros(8, 8, 3, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"item 0 is a tensor of shape \(8, 8, 3\), which looks HWC.*layout='HWC'"):
        dataset_stats([hwc_tensor], num_workers=0)
    assert dataset_stats([hwc_tensor], num_workers=0, layout="HWC")["channels"] == ["R", "G", "B"]
    with pytest.raises(TypeError, match=r"^item 1 is a torch.complex64 tensor: dataset_stats counts integer, real "
                                        r"and boolean pixels$"):
        dataset_stats([hwc_tensor.permute(2, 0, 1), torch.zeros(3, 8, 8, dtype=torch.complex64)], num_workers=0)


def test_the_rules_of_arrays_given_to_bnstats_compute():
    """Float tensors of 4 channels are C0..C3 (features, not RGBA) and boolean tensors count as 0 and 1, as for
    arrays given to bnstats.compute: the same names and the same numbers."""
    import bnstats

    floats = [torch.rand(4, 3, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    ours = dataset_stats(floats, num_workers=0)
    theirs = bnstats.compute(np.stack([t.permute(1, 2, 0).numpy() for t in floats])).report
    assert ours["channels"] == theirs["channels"] == ["C0", "C1", "C2", "C3"]
    np.testing.assert_allclose(ours["mean"], theirs["mean"], rtol=1e-15)
    masks = [torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(i)) > 0.5 for i in range(3)]
    ours = dataset_stats(masks, num_workers=0)
    theirs = bnstats.compute(np.stack([m[0].numpy() for m in masks])).report
    assert ours["mean"] == theirs["mean"]  # float data, counted by one rule: the same bits
    ones = np.concatenate([m.numpy().ravel() for m in masks])
    assert ours["mean"] == [pytest.approx(ones.sum() / ones.size, rel=1e-15)]


def test_items_that_do_not_go_together_are_a_value_error_naming_the_item():
    items = [torch.zeros(3, 2, 2, dtype=torch.uint8), torch.zeros(3, 2, 2, dtype=torch.uint8),
             torch.zeros(1, 2, 2, dtype=torch.uint8)]
    with pytest.raises(ValueError, match=r"^item 2: bands L differ from earlier images' RGB: convert the images to one mode in the dataset"):
        dataset_stats(items, num_workers=0, batch_size=5)
    with pytest.raises(ValueError, match=r"cannot be counted with the earlier ones: cannot combine 3-channel float data"):
        dataset_stats([items[0], items[0].float()], num_workers=0, batch_size=1)


def test_by_label_needs_a_label_and_settings_are_checked():
    images = random_images(np.uint8, 3, [(2, 2)])
    with pytest.raises(TypeError, match="item 0 has no label: by_label needs"):
        dataset_stats(images, num_workers=0, by_label=True)
    with pytest.raises(TypeError, match=r"item 0 has a label of shape \(2,\)"):
        dataset_stats([(images[0], torch.tensor([0, 1]))], num_workers=0, by_label=True)
    for bad in ({"batch_size": 0}, {"layout": "NCHW"}, {"num_workers": -1}):
        with pytest.raises(ValueError), warnings.catch_warnings():
            dataset_stats(Images(images), **bad)


class Sharded(IterableDataset):
    """An iterable dataset that splits itself between DataLoader workers, as the DataLoader docs ask."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        return iter(self.items[start::step])


def test_iterable_datasets_in_dataloaders_and_in_workers():
    images = random_images(np.uint8, 3, SIZES * 2, seed=7)
    ref = dataset_stats(images, num_workers=0)
    assert dataset_stats(DataLoader(Sharded(images), batch_size=3)) == ref
    assert dataset_stats(DataLoader(Sharded(images), batch_size=None)) == ref  # items one by one
    assert dataset_stats(Sharded(images), num_workers=2, batch_size=2) == ref


def test_an_error_in_a_later_batch_of_an_iterable_names_the_item_in_the_order_received():
    items = random_images(np.uint8, 3, [(2, 2)] * 9)
    items[7] = None
    with pytest.raises(TypeError, match=r"^item 7 is a builtins.NoneType"):
        dataset_stats(Stream(items), num_workers=0, batch_size=3)
