"""One dataset, every path: the same pixels reached through each input kind and way of running give one report.

8-bit pixels are counted exactly, so every path must give the same bytes of ``raw`` (mean, std, var, min, max,
median, percentiles), ``covariance``, ``images`` and ``pixels``; the numbers are also checked against a numpy
float64 full load. A difference here is a path that reads, orders, samples or transforms the pixels differently.
"""

from __future__ import annotations

import json
import tarfile
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from helpers import cli, cli_json
from reference import assert_report_matches, full_load

N, H, W = 12, 5, 7  # odd sizes: rows and columns never line up with a power of two
OPTIONS = ("--percentiles", "1,50,99.5", "--covariance")


def same_numbers(report: dict) -> dict:
    """What must be identical bytes between paths: the raw statistics, covariance and counts."""
    raw = {key: report["raw"][key] for key in ("mean", "std", "var", "min", "max", "median", "percentiles")}
    return {"raw": raw, "covariance": report.get("covariance"), "images": report["images"],
            "pixels": report["pixels"], "skipped": len(report["skipped"])}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """``(root, pixels)``: 12 RGB images as PNGs in class folders a/ and b/, and the same pixels as every
    other input kind beside them (archives, WebDataset shards, lists, arrays, Parquet)."""
    root = tmp_path_factory.mktemp("same")
    pixels = np.random.default_rng(2024).integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    names = [f"{'ab'[i % 2]}/img{i:02d}.png" for i in range(N)]
    for name, image in zip(names, pixels):
        (root / "png" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "png" / name)
    order = sorted(range(N), key=lambda i: names[i])  # the order a walk counts them in
    ordered = pixels[order]
    for suffix, mode in (("tar", "w"), ("tar.gz", "w:gz")):
        with tarfile.open(root / f"all.{suffix}", mode) as tar:
            for name in sorted(names):
                tar.add(root / "png" / name, arcname=name)
    with zipfile.ZipFile(root / "all.zip", "w") as archive:
        for name in sorted(names):
            archive.write(root / "png" / name, arcname=name)
    (root / "wds").mkdir()
    for k in range(3):
        with tarfile.open(root / "wds" / f"shard-{k}.tar", "w") as tar:
            for name in sorted(names)[k::3]:
                tar.add(root / "png" / name, arcname=name)
    (root / "list.txt").write_text("".join(f"{root / 'png' / name}\n" for name in sorted(names)))
    np.save(root / "x.npy", ordered)
    np.savez(root / "x.npz", images=ordered)
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    cells = [(root / "png" / name).read_bytes() for name in sorted(names)]
    pq.write_table(pyarrow.table({"image": pyarrow.array(cells, pyarrow.binary())}), root / "x.parquet",
                   row_group_size=5)
    return root, ordered


@pytest.fixture(scope="module")
def folder_report(dataset):
    root, _ = dataset
    return cli_json("compute", root / "png", "-q", "-j", "1", *OPTIONS)


def test_the_folder_is_the_numpy_full_load(dataset, folder_report):
    _, pixels = dataset
    assert_report_matches(folder_report, full_load(list(pixels)), tol=1e-12)
    covariance = np.cov(pixels.reshape(-1, 3).T.astype(np.float64), bias=True) / 255**2
    np.testing.assert_allclose(folder_report["covariance"], covariance, rtol=1e-12)


PATHS = {
    "tar": ["all.tar"], "tar.gz": ["all.tar.gz"], "zip": ["all.zip"], "wds braces": ["wds/shard-{0..2}.tar"],
    "wds folder": ["wds"], "files-from": ["--files-from", "list.txt"], "npy": ["x.npy"], "npz": ["x.npz"],
    "parquet": ["x.parquet"], "sample of all": ["png", "--sample", str(N)], "until-ci": ["png", "--until-ci", "1e-9"],
    "npy sample of all": ["x.npy", "--sample", str(N)], "parquet sample of all": ["x.parquet", "--sample", str(N)],
}


IN_WORKERS = ("tar", "wds folder", "npy", "parquet", "sample of all", "parquet sample of all")  # and -j 1 for each


@pytest.mark.parametrize("path,workers", [(path, "1") for path in sorted(PATHS)] + [(path, "2") for path in IN_WORKERS])
def test_every_path_to_the_same_pixels_gives_the_same_bytes(dataset, folder_report, path, workers, monkeypatch):
    root, _ = dataset
    monkeypatch.chdir(root)  # relative spellings, as typed
    report = cli_json("compute", *PATHS[path], "-q", "-j", workers, *OPTIONS)
    assert same_numbers(report) == same_numbers(folder_report)


def test_standard_input_list_shards_and_merge_give_the_same_bytes(dataset, folder_report, tmp_path):
    root, _ = dataset
    listed = cli("compute", "--files-from", "-", "-q", *OPTIONS, input=(root / "list.txt").read_text(), expect=0)
    assert same_numbers(json.loads(listed.stdout)) == same_numbers(folder_report)
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"part{k}.json")
        cli("compute", root / "all.zip", "--shard", f"{k}/3", "-q", "-o", parts[-1], *OPTIONS, expect=0)
    merged = cli_json("merge", *parts)
    zipped = cli_json("compute", root / "all.zip", "-q", *OPTIONS)
    assert merged["raw"] == zipped["raw"] and same_numbers(merged) == same_numbers(folder_report)


def test_group_by_class_of_the_folder_and_of_its_tar_agree(dataset, monkeypatch):
    root, _ = dataset
    monkeypatch.chdir(root)
    folder = cli_json("compute", "png", "--group-by", "class", "-q", "-j", "2")
    tarred = cli_json("compute", "all.tar", "--group-by", "class", "-q", "-j", "2")
    assert sorted(folder["groups"]) == ["a", "b"]
    assert {k: g["raw"] for k, g in folder["groups"].items()} == {k: g["raw"] for k, g in tarred["groups"].items()}
    assert sum(g["pixels"] for g in folder["groups"].values()) == folder["pixels"]


def test_the_python_api_and_a_torch_dataset_give_the_same_bytes(dataset, folder_report):
    import bnstats

    root, pixels = dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_path = bnstats.compute(str(root / "png"), percentiles=[1, 50, 99.5], covariance=True)
        in_memory = bnstats.compute(pixels, percentiles=[1, 50, 99.5], covariance=True)
    assert by_path.to_json() == cli("compute", root / "png", "-q", *OPTIONS, expect=0).stdout
    assert same_numbers(in_memory.report) == same_numbers(folder_report)
    torch = pytest.importorskip("torch")
    from bnstats.torch import dataset_stats

    tensors = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    report = dataset_stats([(t, 0) for t in tensors], batch_size=5, num_workers=0, percentiles="1,50,99.5")
    assert report["raw"] == {k: v for k, v in folder_report["raw"].items() if k != "covariance"}  # no such option
