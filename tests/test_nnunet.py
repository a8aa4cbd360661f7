"""``--layout nnunet``: a raw nnU-Net dataset, a case one item with its channel files as bands and
``labelsTr`` as its masks; the foreground equals numpy's on the labelled voxels."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from helpers import cli, cli_json, one_line_error

nib = pytest.importorskip("nibabel")


def raw_dataset(root, cases=3, channels=("T1", "T2"), shape=(4, 5, 3), seed=0):
    """A raw dataset folder, and per channel the voxels of every case and the labels, in bnstats' order."""
    folder = root / "Dataset001_Test"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): name for i, name in enumerate(channels)}, "labels": {"background": 0, "a": 1,
                                                                                     "b": 2},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    rng = np.random.default_rng(seed)
    voxels, labels = [], []
    for case in range(cases):
        planes = []
        for c in range(len(channels)):
            volume = rng.integers(-500, 1500, shape, dtype=np.int16)
            nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / "imagesTr" / f"case_{case:03d}_{c:04d}.nii.gz")
            planes.append(volume.reshape(-1, order="F"))
        label = rng.integers(0, 3, shape, dtype=np.uint8)
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "labelsTr" / f"case_{case:03d}.nii.gz")
        voxels.append(np.stack(planes, axis=1))
        labels.append(label.reshape(-1, order="F"))
    return folder, np.concatenate(voxels), np.concatenate(labels)


def test_cases_are_items_with_their_channels_and_labelstr_is_the_mask(tmp_path, monkeypatch):
    folder, voxels, labels = raw_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    report = cli_json("compute", folder.name, "--layout", "nnunet", "-j", "1")
    assert report["channels"] == ["T1", "T2"] and report["images"] == 3
    assert report["foreground"]["mask"] == os.path.join(folder.name, "labelsTr", "{case}{ext}")
    foreground = voxels[labels > 0].astype(np.float64)
    raw = report["foreground"]["raw"]
    assert report["foreground"]["pixels"] == len(foreground)
    assert raw["mean"] == pytest.approx(list(foreground.mean(axis=0)), rel=1e-12)
    assert raw["std"] == pytest.approx(list(foreground.std(axis=0)), rel=1e-12)
    assert raw["median"] == [float(np.median(foreground[:, c])) for c in range(2)]
    assert sorted(report["groups"]) == ["0", "1", "2"]
    exported = json.loads(cli("export", "-", "--format", "nnunet", input=json.dumps(report), expect=0).stdout)
    channel = exported["foreground_intensity_properties_per_channel"]["1"]
    assert channel["percentile_99_5"] == pytest.approx(np.percentile(foreground[:, 1], 99.5), abs=1e-9)


@pytest.mark.slow  # a second or more: the quick tier keeps under a minute on 2 cores
def test_workers_and_shards_give_the_same_foreground(tmp_path, monkeypatch):
    folder, _, _ = raw_dataset(tmp_path, cases=5)
    monkeypatch.chdir(tmp_path)
    one = cli("compute", folder.name, "--layout", "nnunet", "-j", "1", expect=0).stdout
    assert cli("compute", folder.name, "--layout", "nnunet", "-j", "2", expect=0).stdout == one
    for k in range(2):
        cli("compute", folder.name, "--layout", "nnunet", "--shard", f"{k}/2", "-o", f"part{k}.json", expect=0)
    merged = cli_json("merge", "part0.json", "part1.json")
    assert merged["foreground"] == json.loads(one)["foreground"]


def test_a_case_missing_a_channel_or_of_mixed_shapes_is_a_skip_entry(tmp_path, monkeypatch):
    folder, _, _ = raw_dataset(tmp_path)
    os.remove(folder / "imagesTr" / "case_001_0001.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), folder / "imagesTr" / "case_002_0001.nii.gz")
    monkeypatch.chdir(tmp_path)
    report = cli_json("compute", folder.name, "--layout", "nnunet", "-j", "1")
    errors = {s["path"]: s["error"] for s in report["skipped"]}
    key = os.path.join(folder.name, "imagesTr")
    assert errors[os.path.join(key, "case_001")] == f"no channel file {os.path.join(key, 'case_001_0001.nii.gz')}"
    assert "a case's channels have one shape" in errors[os.path.join(key, "case_002")]
    assert report["images"] == 1


def test_a_folder_that_is_no_raw_dataset_is_one_line(tmp_path):
    (tmp_path / "plain").mkdir()
    assert "dataset.json" in one_line_error(cli("compute", tmp_path / "plain", "--layout", "nnunet"), 1)
    (tmp_path / "plain" / "dataset.json").write_text('{"channel_names": {"1": "CT"}}')
    assert "not an nnU-Net dataset.json" in one_line_error(cli("compute", tmp_path / "plain", "--layout", "nnunet"), 1)
    assert "unknown layout" in one_line_error(cli("compute", tmp_path / "plain", "--layout", "monai"), 2)


def test_natural_images_mixed_types_and_hostile_json(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "Dataset003_Rgb"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"},
                                                     "labels": {"background": 0, "x": 1}, "file_ending": ".png"}))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    label = rng.integers(0, 2, (6, 7), dtype=np.uint8)
    Image.fromarray(image).save(folder / "imagesTr" / "a_0000.png")
    Image.fromarray(label).save(folder / "labelsTr" / "a.png")
    report = cli_json("compute", folder.name, "--layout", "nnunet", "-j", "1")
    assert report["channels"] == ["R", "G", "B"]
    assert report["foreground"]["raw"]["mean"] == pytest.approx(list(image[label > 0].mean(axis=0)), rel=1e-12)
    deep = tmp_path / "Deep"
    deep.mkdir()
    (deep / "dataset.json").write_text("[" * 100_000)
    assert "not an nnU-Net dataset.json" in one_line_error(cli("compute", deep, "--layout", "nnunet"), 1)


def test_files_that_are_no_channel_are_said_and_mixed_types_refused(tmp_path, monkeypatch):
    folder, _, _ = raw_dataset(tmp_path, cases=2)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.int16), np.eye(4)), folder / "imagesTr" / "case_000_0005.nii.gz")
    # float32 of fractions (float32 of whole 16-bit numbers is read as int16: it would join)
    nib.save(nib.Nifti1Image(np.full((4, 5, 3), 0.5, np.float32), np.eye(4)),
             folder / "imagesTr" / "case_001_0001.nii.gz")
    monkeypatch.chdir(tmp_path)
    result = cli("compute", folder.name, "--layout", "nnunet", "-j", "1", expect=0)
    assert "1 files are no channel dataset.json names (first: case_000_0005.nii.gz)" in result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 1 and "channels stored as float32 and int16" in report["skipped"][0]["error"]


def test_a_channel_on_another_grid_than_channel_0_is_a_skip_entry(tmp_path, monkeypatch):
    folder, _, _ = raw_dataset(tmp_path, cases=2)
    flipped = np.diag([-1.0, 1, 1, 1])
    flipped[0, 3] = 5
    volume = np.asanyarray(nib.load(folder / "imagesTr" / "case_001_0001.nii.gz").dataobj)
    nib.save(nib.Nifti1Image(volume, flipped), folder / "imagesTr" / "case_001_0001.nii.gz")
    monkeypatch.chdir(tmp_path)
    report = cli_json("compute", folder.name, "--layout", "nnunet", "-j", "1")
    assert report["images"] == 1 and "lies on another grid than channel 0" in report["skipped"][0]["error"]


def test_a_case_of_one_scaled_and_one_unscaled_channel_is_counted_not_refused(tmp_path, monkeypatch):
    """T1 stored int16 as it is, T2 stored int16 with scl_slope 0.5: both saved alike, so the case is no skip
    entry "channels stored as float64 and int16" (the scaled one's values are float64, the other's as well)."""
    folder, voxels, _ = raw_dataset(tmp_path, cases=1)
    path = folder / "imagesTr" / "case_000_0001.nii.gz"
    image = nib.load(str(path))
    stored = np.asarray(image.dataobj)
    scaled = nib.Nifti1Image(stored, np.eye(4))
    scaled.header.set_slope_inter(0.5, 2.0)
    nib.save(scaled, str(path))
    monkeypatch.chdir(tmp_path)
    report = cli_json("compute", folder.name, "--layout", "nnunet", "-j", "1")
    assert report["skipped"] == [] and report["images"] == 1
    expected = voxels.astype(np.float64) * [1.0, 0.5] + [0.0, 2.0]
    assert report["raw"]["mean"] == pytest.approx(list(expected.mean(axis=0)), rel=1e-14)
    assert report["raw"]["min"] == list(expected.min(axis=0)) and report["raw"]["max"] == list(expected.max(axis=0))


def test_an_msd_task_folder_not_yet_converted_is_one_line_saying_why(tmp_path):
    """MSD's Task01_BrainTumour: 4-D files without channel suffixes and v1's modality key. It stopped with 'no
    images found', the reason (no file is a channel file) in a note never printed."""
    task = tmp_path / "Task01_BrainTumour"
    (task / "imagesTr").mkdir(parents=True)
    for i in range(2):
        volume = nib.Nifti1Image(np.zeros((3, 3, 2, 4), np.float32), np.eye(4))
        nib.save(volume, task / "imagesTr" / f"BRATS_{i:03d}.nii.gz")
    (task / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}))
    line = one_line_error(cli("compute", task, "--layout", "nnunet", "-q"), 1)
    assert "no channel files such as CASE_0000.nii.gz" in line and "BRATS_000.nii.gz" in line
    assert "without --layout" in line
