"""``--mask``: label maps paired with images; ``foreground`` (label > 0) and per-label ``groups``, exact.

Compared with numpy on the masked pixels, for PNG images with PNG masks and
for NIfTI volumes with NIfTI label maps named by nnU-Net's pattern; the same
bytes for any worker count, shards + merge and a resume; a mask that cannot
be used is the item's skip entry, naming both files.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from bnstats import limits
from bnstats.decoding.options import DecodeOptions
from bnstats.inputs.files import FileSource
from bnstats.inputs.masks import MaskRule
from bnstats.running.count import CountSpec, count_partition

from bnstats.running import engine

from helpers import cli, cli_json, interrupt_after, one_line_error


def pngs_and_masks(root, count=6, labels=3, shape=(6, 7), seed=0):
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(count):
        cls = f"c{i % 2}"
        for folder in ("img", "masks"):
            (root / folder / cls).mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        mask = rng.integers(0, labels, shape, dtype=np.uint8)
        Image.fromarray(image).save(root / "img" / cls / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / cls / f"{i}.png")
        images.append(image.reshape(-1, 3))
        masks.append(mask.reshape(-1))
    return root / "img", root / "masks", np.concatenate(images), np.concatenate(masks)


def assert_matches(fields: dict, pixels: np.ndarray, scale: float = 255.0):
    """``fields`` (a report's or a group's) are numpy's, to the last digit for the exact ones."""
    values = pixels.astype(np.float64)
    assert fields["pixels"] == len(pixels)
    np.testing.assert_allclose(fields["mean"], values.mean(axis=0) / scale, rtol=1e-12)
    np.testing.assert_allclose(fields["std"], values.std(axis=0) / scale, rtol=1e-9)
    assert fields["min"] == list(values.min(axis=0) / scale)
    assert fields["max"] == list(values.max(axis=0) / scale)
    assert fields["raw"]["median"] == [float(np.median(values[:, c])) for c in range(values.shape[1])]


def test_foreground_and_each_label_are_numpys_on_the_masked_pixels(tmp_path):
    images, masks, pixels, labels = pngs_and_masks(tmp_path)
    report = cli_json("compute", images, "--mask", masks, "-j", "1", "--percentiles", "0.5,99.5")
    assert_matches(report["foreground"], pixels[labels > 0])
    assert report["foreground"]["mask"] == str(masks)
    for p in ("0.5", "99.5"):  # numpy's default (linear) rule, exact: read off the integer histogram
        assert report["foreground"]["raw"]["percentiles"][p] == pytest.approx(
            [np.percentile(pixels[labels > 0][:, c].astype(np.float64), float(p)) for c in range(3)], abs=1e-9)
    assert sorted(report["groups"]) == ["0", "1", "2"]
    for label in (0, 1, 2):
        assert_matches(report["groups"][str(label)], pixels[labels == label])
    plain = cli_json("compute", images, "-j", "1")  # the whole images are counted as without masks
    assert {k: report[k] for k in ("mean", "std", "pixels", "state")} == {k: plain[k] for k in ("mean", "std", "pixels",
                                                                                                "state")}


def test_workers_shards_merge_and_resume_give_the_same_bytes(tmp_path, monkeypatch):
    images, masks, _, _ = pngs_and_masks(tmp_path, count=9)
    one = cli("compute", images, "--mask", masks, "-j", "1", expect=0).stdout
    assert cli("compute", images, "--mask", masks, "-j", "2", expect=0).stdout == one
    parts = [tmp_path / f"part{k}.json" for k in range(3)]
    for k, part in enumerate(parts):
        cli("compute", images, "--mask", masks, "--shard", f"{k}/3", "-o", part, expect=0)
    merged, whole = cli_json("merge", *parts), json.loads(one)
    assert merged["foreground"] == whole["foreground"] and merged["groups"] == whole["groups"]
    # a checkpoint holds the foreground too: stopped in the second partition, the resumed run is the whole one
    ck = tmp_path / "run.ckpt"
    with monkeypatch.context() as m:
        m.setattr(engine, "CHUNK_SIZE", 2)
        interrupt_after(m, 2)
        cli("compute", images, "--mask", masks, "-q", "-j", "1", "--checkpoint", ck, expect=130)
    assert "foreground" in ck.read_text()
    monkeypatch.setattr(engine, "CHUNK_SIZE", 2)
    assert cli("compute", images, "--mask", masks, "-j", "1", "--checkpoint", ck, expect=0).stdout == one


def test_nnunet_volumes_with_label_maps_named_by_pattern(tmp_path, monkeypatch):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(1)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    voxels, labels = [], []
    for case in ("case_001", "case_002"):
        volume = rng.integers(-1024, 2000, (5, 6, 4), dtype=np.int16)
        label = rng.integers(0, 3, (5, 6, 4), dtype=np.uint8)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "labelsTr" / f"{case}.nii.gz")
        voxels.append(volume.reshape(-1, 1, order="F"))
        labels.append(label.reshape(-1, order="F"))
    voxels, labels = np.concatenate(voxels), np.concatenate(labels)
    monkeypatch.chdir(tmp_path)
    report = cli_json("compute", "imagesTr", "--mask", "labelsTr/{case}.nii.gz", "-j", "1", "--percentiles", "0.5,99.5")
    raw = report["foreground"]["raw"]
    foreground = voxels[labels > 0, 0].astype(np.float64)
    assert report["foreground"]["pixels"] == len(foreground)
    assert raw["mean"] == pytest.approx([foreground.mean()], rel=1e-12)
    assert raw["median"] == [float(np.median(foreground))]
    assert raw["min"] == [foreground.min()] and raw["max"] == [foreground.max()]
    assert raw["percentiles"]["99.5"] == pytest.approx([np.percentile(foreground, 99.5)], abs=1e-9)
    assert raw["percentiles"]["0.5"] == pytest.approx([np.percentile(foreground, 0.5)], abs=1e-9)
    assert report["groups"]["2"]["raw"]["median"] == [float(np.median(voxels[labels == 2, 0]))]


def test_a_mask_that_cannot_be_used_is_a_skip_entry_naming_both_files(tmp_path):
    images, masks, _, _ = pngs_and_masks(tmp_path, count=4)
    os.remove(masks / "c0" / "0.png")  # missing
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(masks / "c1" / "1.png")  # another shape
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(masks / "c0" / "2.png")  # three bands
    report = cli_json("compute", images, "--mask", masks, "-j", "1")
    errors = {os.path.basename(s["path"]): s["error"] for s in report["skipped"]}
    assert sorted(errors) == ["0.png", "1.png", "2.png"] and report["images"] == 1
    assert errors["0.png"].startswith(f"mask {masks / 'c0' / '0.png'}: FileNotFoundError")
    assert errors["1.png"] == f"mask {masks / 'c1' / '1.png'} is 3x3, the image 6x7: a mask has its image's shape"
    assert "has 3 bands: a label map has one" in errors["2.png"]
    line = one_line_error(cli("compute", images, "--mask", masks, "-j", "1", "--strict"), 1)
    assert f"mask {masks / 'c0' / '0.png'}" in line


def test_more_labels_than_the_bound_stop_the_run_in_one_line(tmp_path, monkeypatch):
    images, masks, _, _ = pngs_and_masks(tmp_path, count=2, labels=5)
    monkeypatch.setenv("BNSTATS_MAX_LABELS", "3")
    limits.install(limits.Limits.from_environ())
    try:
        line = one_line_error(cli("compute", images, "--mask", masks, "-j", "1"), 1)
    finally:
        monkeypatch.delenv("BNSTATS_MAX_LABELS")
        limits.install(limits.Limits.from_environ())
    assert "distinct labels" in line and "BNSTATS_MAX_LABELS" in line


def test_options_that_cannot_go_with_masks_are_usage_errors(tmp_path):
    images, masks, _, _ = pngs_and_masks(tmp_path, count=2)
    np.save(tmp_path / "rows.npy", np.zeros((2, 6, 7, 3), np.uint8))
    for args in (["--group-by", "class"], ["--resize", "4"]):
        assert "--" in one_line_error(cli("compute", images, "--mask", masks, *args), 2)
    assert "--mask" in one_line_error(cli("compute", tmp_path / "rows.npy", "--mask", masks), 2)
    assert "--mask" in one_line_error(cli("compare", images, "--mask", masks), 2)
    assert "unknown field" in one_line_error(cli("compute", images, "--mask", "m/{stem}.png"), 2)


def test_merge_refuses_results_of_different_masks(tmp_path):
    images, masks, _, _ = pngs_and_masks(tmp_path, count=4)
    (tmp_path / "other").symlink_to(masks)
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    cli("compute", images, "--mask", masks, "--shard", "0/2", "-o", a, expect=0)
    cli("compute", images, "--mask", tmp_path / "other", "--shard", "1/2", "-o", b, expect=0)
    cli("compute", images, "--shard", "1/2", "-o", c, expect=0)
    assert "different --mask" in one_line_error(cli("merge", a, b), 1)
    assert "--" in one_line_error(cli("merge", a, c), 1)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**32 - 1), st.integers(1, 5), st.sampled_from([None, 0]))
def test_any_split_of_the_items_merges_to_numpys_foreground(tmp_path_factory, count, seed, cut, ignore):
    root = tmp_path_factory.mktemp("masked")
    images, masks, pixels, labels = pngs_and_masks(root, count=count, seed=seed)
    keys = sorted(str(p) for p in images.rglob("*.png"))
    source = FileSource([str(images)])
    spec = CountSpec(DecodeOptions(ignore_value=ignore), mask=MaskRule(str(masks)))
    cut = min(cut, len(keys))
    whole = count_partition(source, keys, spec).tally
    first, second = count_partition(source, keys[:cut], spec).tally, count_partition(source, keys[cut:], spec).tally
    merged = first.merge(second)
    assert merged.foreground.to_dict() == whole.foreground.to_dict()
    assert {k: v.to_dict() for k, v in merged.groups.items()} == {k: v.to_dict() for k, v in whole.groups.items()}
    kept = labels > 0
    if ignore is not None:
        kept &= (pixels != ignore).any(axis=1)
    assert whole.foreground.pixels == int(kept.sum())
    if kept.any():
        np.testing.assert_allclose(whole.foreground.result()["mean"], pixels[kept].mean(axis=0) / 255, rtol=1e-12)


def test_export_nnunet_gives_the_exact_foreground_in_nnunets_names(tmp_path):
    images, masks, pixels, labels = pngs_and_masks(tmp_path)
    result = tmp_path / "stats.json"
    cli("compute", images, "--mask", masks, "-o", result, expect=0)
    exported = json.loads(cli("export", result, "--format", "nnunet", expect=0).stdout)
    properties = exported["foreground_intensity_properties_per_channel"]
    assert list(properties) == ["0", "1", "2"]
    foreground = pixels[labels > 0].astype(np.float64)
    for c in range(3):
        values = foreground[:, c]
        expected = {"mean": values.mean(), "median": np.median(values), "std": values.std(), "min": values.min(),
                    "max": values.max(), "percentile_99_5": np.percentile(values, 99.5),
                    "percentile_00_5": np.percentile(values, 0.5)}
        assert list(properties[str(c)]) == list(expected)  # nnU-Net's keys, in the order
        assert properties[str(c)] == pytest.approx(expected, rel=1e-12, abs=1e-9)
    plain = tmp_path / "plain.json"
    cli("compute", images, "-o", plain, expect=0)
    assert "--mask" in one_line_error(cli("export", plain, "--format", "nnunet"), 1)


def test_a_mask_stored_otherwise_than_its_image_is_never_paired(tmp_path):
    """A NIfTI label map for PNG images (or the reverse) could match in shape with voxels in another order:
    a skip entry, never a pairing."""
    nib = pytest.importorskip("nibabel")
    images, masks, _, _ = pngs_and_masks(tmp_path, count=2)
    nib.save(nib.Nifti1Image(np.zeros((6, 7), np.uint8), np.eye(4)), masks / "c0" / "0.nii.gz")
    line = one_line_error(cli("compute", images, "--mask", str(masks / "{path}.nii.gz"), "-j", "1", "-q"), 1)
    assert line.startswith("Error: none of the 2 images could be read")
    assert "0.nii.gz is read as NIfTI volumes and the image a 2-D image file" in line


def test_dask_counts_the_foreground_as_locally(tmp_path):
    distributed = pytest.importorskip("distributed")
    images, masks, _, _ = pngs_and_masks(tmp_path, count=5)
    local = cli_json("compute", images, "--mask", masks, "-j", "1")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        remote = cli_json("compute", images, "--mask", masks, "--scheduler", c.scheduler_address)
    assert remote["foreground"] == local["foreground"] and remote["groups"] == local["groups"]


def test_a_tiffs_own_nodata_counts_as_without_a_mask(tmp_path):
    """GDAL_NODATA leaves the same pixels out of the whole image with --mask as without, and of the foreground."""
    tifffile = pytest.importorskip("tifffile")
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    image = np.random.default_rng(3).integers(1, 1000, (10, 10), dtype=np.uint16)
    image[:3] = 0
    tifffile.imwrite(tmp_path / "img" / "x.tif", image, extratags=[(42113, "s", 0, "0", True)])
    mask = np.zeros((10, 10), np.uint8)
    mask[:5] = 1
    tifffile.imwrite(tmp_path / "mask" / "x.tif", mask)
    plain = cli_json("compute", tmp_path / "img", "--mode", "native", "-j", "1")
    masked = cli_json("compute", tmp_path / "img", "--mode", "native", "--mask", tmp_path / "mask", "-j", "1")
    assert {k: masked[k] for k in ("raw", "pixels", "state")} == {k: plain[k] for k in ("raw", "pixels", "state")}
    kept = (mask > 0) & (image != 0)
    assert masked["foreground"]["pixels"] == int(kept.sum())
    assert masked["foreground"]["raw"]["mean"] == pytest.approx([image[kept].mean()], rel=1e-12)


def test_a_nifti_mask_on_another_grid_is_never_paired(tmp_path):
    nib = pytest.importorskip("nibabel")
    for folder in ("img", "mask"):
        (tmp_path / folder).mkdir()
    volume = np.random.default_rng(0).integers(0, 1000, (4, 5, 3), dtype=np.int16)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "img" / "a.nii.gz")
    flipped = np.diag([-1.0, 1, 1, 1])  # the same physical mask stored flipped in x
    nib.save(nib.Nifti1Image(np.ones((4, 5, 3), np.uint8), flipped), tmp_path / "mask" / "a.nii.gz")
    line = one_line_error(cli("compute", tmp_path / "img", "--mask", tmp_path / "mask", "-j", "1", "-q"), 1)
    assert "lies on another grid than its image" in line


def test_labels_int64_cannot_hold_and_stored_palettes(tmp_path):
    images, masks, pixels, labels = pngs_and_masks(tmp_path, count=2)
    palette = Image.fromarray(np.zeros((6, 7), np.uint8), "P")  # Pascal VOC: labels are palette indices
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    palette.putdata(list(labels[:42]))
    palette.save(masks / "c0" / "0.png")
    report = cli_json("compute", images, "--mask", masks, "-j", "1")
    assert report["skipped"] == [] and sorted(report["groups"]) == ["0", "1", "2"]
    assert_matches(report["foreground"], pixels[labels > 0])
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(masks / "c0" / "0.tif", np.full((6, 7), 2**63 + 5, np.uint64))  # int64 would wrap it
    tifffile.imwrite(masks / "c1" / "1.tif", np.ones((6, 7), np.uint64))
    report = cli_json("compute", images, "--mask", str(masks / "{path}.tif"), "-j", "1")
    skipped = {os.path.basename(s["path"]): s["error"] for s in report["skipped"]}
    assert "beyond 2**63" in skipped["0.png"]


def test_exif_transpose_and_masks_are_a_usage_error(tmp_path):
    images, masks, _, _ = pngs_and_masks(tmp_path, count=2)
    assert "--exif-transpose" in one_line_error(cli("compute", images, "--mask", masks, "--exif-transpose"), 2)


def test_a_damaged_mask_is_named_not_its_image(tmp_path):
    images, masks, _, _ = pngs_and_masks(tmp_path, count=2)
    data = (masks / "c0" / "0.png").read_bytes()
    (masks / "c0" / "0.png").write_bytes(data[: len(data) // 2])
    report = cli_json("compute", images, "--mask", masks, "-j", "1")
    assert report["skipped"][0]["error"].startswith(f"mask {masks / 'c0' / '0.png'}: ")


def test_hand_edits_empty_foregrounds_and_format_fields_are_said(tmp_path):
    images, masks, _, _ = pngs_and_masks(tmp_path, count=3)
    result = tmp_path / "r.json"
    cli("compute", images, "--mask", masks, "-o", result, expect=0)
    for edit, field in ((lambda d: d["foreground"].update(pixels=d["foreground"]["pixels"] + 1), "foreground.pixels"),
                        (lambda d: d["foreground"]["raw"]["mean"].__setitem__(0, 1.5), "foreground.raw.mean"),
                        (lambda d: d["foreground"]["state"]["histogram"].pop(), "foreground")):
        doc = json.loads(result.read_text())
        edit(doc)
        edited = tmp_path / "edited.json"
        edited.write_text(json.dumps(doc))
        assert field in one_line_error(cli("export", edited, "--format", "nnunet"), 1)
    plain = tmp_path / "plain.json"
    cli("compute", images, "--shard", "1/2", "-o", plain, expect=0)
    half = tmp_path / "half.json"
    cli("compute", images, "--mask", masks, "--shard", "0/2", "-o", half, expect=0)
    assert "made with and without --mask" in one_line_error(cli("merge", half, plain), 1)
    for name in os.listdir(masks / "c0"):  # every label 0: an empty foreground, said
        Image.fromarray(np.zeros((6, 7), np.uint8)).save(masks / "c0" / name)
    for name in os.listdir(masks / "c1"):
        Image.fromarray(np.zeros((6, 7), np.uint8)).save(masks / "c1" / name)
    empty = cli("compute", images, "--mask", masks, "-o", result, expect=0)
    assert "the foreground is empty" in empty.stderr
    assert "no pixel was labelled above 0" in one_line_error(cli("export", result, "--format", "nnunet"), 1)
    assert "{name:d}" in one_line_error(cli("compute", images, "--mask", "m/{name:d}.png"), 2)


def test_the_pages_of_a_tiff_stack_pair_with_the_pages_of_its_mask(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(5)
    stack, mask = rng.integers(0, 256, (3, 6, 7), dtype=np.uint8), rng.integers(0, 3, (3, 6, 7), dtype=np.uint8)
    for folder, planes in (("img", stack), ("mask", mask), ("one", mask[:1]), ("two", mask[:2])):
        (tmp_path / folder).mkdir()
        for plane in planes:
            tifffile.imwrite(tmp_path / folder / "s.tif", plane, append=True, photometric="minisblack")
    paired = cli_json("compute", tmp_path / "img", "--mask", tmp_path / "mask", "--mode", "native", "-j", "1")
    assert paired["images"] == 3 and paired["skipped"] == []
    assert_matches(paired["foreground"], stack[mask > 0][:, None])
    shared = cli_json("compute", tmp_path / "img", "--mask", tmp_path / "one", "--mode", "native", "-j", "1")
    assert_matches(shared["foreground"], stack[np.broadcast_to(mask[:1], stack.shape) > 0][:, None])
    line = one_line_error(cli("compute", tmp_path / "img", "--mask", tmp_path / "two", "-q", "-j", "1"), 1)
    assert "is a stack of 2 pages, the image a stack of 3" in line


def test_one_bit_and_palette_tiff_masks_are_their_stored_labels_as_pngs_are(tmp_path):
    images, masks, pixels, labels = pngs_and_masks(tmp_path, count=2, labels=2)
    for path in masks.rglob("*.png"):
        stored = np.asarray(Image.open(path))
        Image.fromarray(stored.astype(bool)).save(path.with_suffix(".tif"))  # mode "1"
    as_bits = cli_json("compute", images, "--mask", str(masks / "{path}.tif"), "-j", "1")
    as_png = cli_json("compute", images, "--mask", masks, "-j", "1")
    assert sorted(as_bits["groups"]) == ["0", "1"] and as_bits["foreground"] == {**as_png["foreground"],
                                                                                 "mask": str(masks / "{path}.tif")}
    for path in masks.rglob("*.png"):
        palette = Image.open(path).convert("P")
        palette.save(path.with_suffix(".tif"))
    assert cli_json("compute", images, "--mask", str(masks / "{path}.tif"), "-j", "1")["skipped"] == []


def test_a_groups_written_numbers_must_be_its_states(tmp_path):
    images, masks, _, _ = pngs_and_masks(tmp_path, count=2)
    result = tmp_path / "r.json"
    cli("compute", images, "--mask", masks, "-o", result, expect=0)
    doc = json.loads(result.read_text())
    doc["groups"]["1"]["raw"]["mean"][0] += 1
    result.write_text(json.dumps(doc))
    assert "groups.1.raw.mean" in one_line_error(cli("export", result, "--format", "nnunet"), 1)


def test_grids_are_compared_in_voxels():
    """0.5 um voxels: a mask shifted by two voxels (0.9 um) passed a tolerance of 1e-3 mm."""
    from bnstats.inputs.masks import same_grid

    fine = np.diag([0.0005, 0.0005, 0.0005, 1.0])
    shifted = fine.copy()
    shifted[0, 3] = 0.0009
    assert not same_grid(fine, shifted)
    rounded = fine + 1e-9  # float32 rounding of a written affine: the same grid
    rounded[3] = [0, 0, 0, 1]
    assert same_grid(fine, rounded) and same_grid(None, None) and not same_grid(fine, None)


def test_shards_merge_whatever_folder_their_mask_was_named_from(tmp_path, monkeypatch):
    images, masks, _, _ = pngs_and_masks(tmp_path, count=4)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    cli("compute", images, "--mask", masks, "--shard", "0/2", "-o", a, expect=0)
    monkeypatch.chdir(tmp_path)
    cli("compute", images, "--mask", "masks/", "--shard", "1/2", "-o", b, expect=0)
    whole = cli_json("compute", images, "--mask", masks)
    assert cli_json("merge", a, b)["foreground"]["state"] == whole["foreground"]["state"]
