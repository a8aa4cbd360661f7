"""Moving metrics: the trace, BatchNorm's distance from the truth, sampling with 95% intervals."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import cli, interrupt_after
from bnstats.observers.sampling import Sampler, sample_order
from bnstats.statistics.states import ExactMoments
from reference import batchnorm_buffers


def run(*args, expect=0):
    return cli(*args, expect=expect)


def compute(*args) -> dict:
    return json.loads(run("compute", "-q", *args).stdout)


def read_trace(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """90 small RGB images whose brightness varies a lot between images (strong clustering)."""
    root = tmp_path_factory.mktemp("moving") / "d"
    root.mkdir()
    rng = np.random.default_rng(21)
    arrays = []
    for i in range(90):
        base = rng.integers(0, 200, 3)
        a = (base + rng.integers(0, 56, (12 + i % 4, 10, 3))).astype(np.uint8)
        Image.fromarray(a).save(root / f"{i:03d}.png")
        arrays.append(a)
    return root, arrays


# -- the trace --------------------------------------------------------------------------------------------


def test_trace_rows_are_the_exact_running_statistics_for_any_workers(data, tmp_path):
    root, arrays = data
    one = compute(root, "-j", "1", "--trace", tmp_path / "one.csv", "--trace-every", "7")
    two = compute(root, "-j", "2", "--trace", tmp_path / "two.csv", "--trace-every", "7")
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()
    assert one == two
    rows = read_trace(tmp_path / "one.csv")
    assert list(rows[0]) == ["images", "pixels", "mean_R", "mean_G", "mean_B", "std_R", "std_G", "std_B"]
    assert [int(r["images"]) for r in rows] == list(range(7, 90, 7)) + [90]
    for row in rows:
        k = int(row["images"])
        flat = np.concatenate([a.reshape(-1, 3) for a in arrays[:k]]).astype(np.float64) / 255
        assert int(row["pixels"]) == len(flat)
        np.testing.assert_allclose([float(row[f"mean_{b}"]) for b in "RGB"], flat.mean(axis=0), rtol=0, atol=1e-12)
        np.testing.assert_allclose([float(row[f"std_{b}"]) for b in "RGB"], flat.std(axis=0), rtol=0, atol=1e-12)
    assert [float(rows[-1][f"mean_{b}"]) for b in "RGB"] == one["mean"]


def test_trace_default_keeps_at_most_1000_rows_and_a_last_one(tmp_path, data):
    from bnstats.observers.trace import MAX_ROWS, default_every

    assert default_every(2500) == 3 and default_every(900) == 1 and -(-2500 // default_every(2500)) <= MAX_ROWS
    root, _ = data
    compute(root, "--trace", tmp_path / "t.csv")
    assert len(read_trace(tmp_path / "t.csv")) == 90


def test_trace_with_batchnorm_columns_matches_pytorch(data, tmp_path):
    root, arrays = data
    report = compute(root, "--trace", tmp_path / "t.csv", "--trace-every", "10", "--bn-momentum", "0.1",
                     "--batch-size", "10")
    rows = read_trace(tmp_path / "t.csv")
    for row in rows:
        k = int(row["images"])
        batches = [arrays[i : i + 10] for i in range(0, k, 10)]
        mean, var = batchnorm_buffers(batches, 0.1)
        np.testing.assert_allclose([float(row[f"bn_running_mean_{b}"]) for b in "RGB"], mean, atol=1e-12)
        np.testing.assert_allclose([float(row[f"bn_running_var_{b}"]) for b in "RGB"], var, atol=1e-12)
    assert [float(rows[-1][f"bn_running_mean_{b}"]) for b in "RGB"] == report["bn"]["running_mean"]


def test_trace_survives_an_interrupted_and_resumed_run(data, tmp_path, monkeypatch):
    root, _ = data
    whole = compute(root, "-j", "1", "--trace", tmp_path / "whole.csv", "--trace-every", "5")
    ck, trace = tmp_path / "ck.json", tmp_path / "t.csv"
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        run("compute", "-q", root, "-j", "1", "--trace", trace, "--trace-every", "5", "--checkpoint", ck, expect=130)
    with open(trace, "a") as f:
        f.write("999,1,rows written after the checkpoint\n")  # a save that came too late: cut away on resume
    resumed = compute(root, "-j", "2", "--trace", trace, "--trace-every", "5", "--checkpoint", ck)
    assert resumed == whole
    assert trace.read_text() == (tmp_path / "whole.csv").read_text()


# -- BatchNorm: how far from the truth, and precise-BN's estimate ------------------------------------------


def test_bn_block_has_distances_and_the_precise_bn_estimate(data):
    root, arrays = data
    report = compute(root, "--bn-momentum", "0.1", "--batch-size", "8")
    bn = report["bn"]
    flat = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64) / 255
    np.testing.assert_allclose(bn["exact_mean"], flat.mean(axis=0), atol=1e-15)
    np.testing.assert_allclose(bn["exact_var"], flat.var(axis=0), atol=1e-15)
    assert bn["exact_mean"] == report["mean"]
    batches = [np.concatenate([a.reshape(-1, 3) for a in arrays[i : i + 8]]).astype(np.float64) / 255
               for i in range(0, 90, 8)]
    precise_mean = np.mean([b.mean(axis=0) for b in batches], axis=0)
    precise_var = np.mean([b.var(axis=0, ddof=1) for b in batches], axis=0)
    np.testing.assert_allclose(bn["precise_bn"]["running_mean"], precise_mean, atol=1e-14)
    np.testing.assert_allclose(bn["precise_bn"]["running_var"], precise_var, atol=1e-14)
    for name, estimate in (("running_mean", bn["running_mean"]), ("running_var", bn["running_var"])):
        exact = bn["exact_mean"] if name == "running_mean" else bn["exact_var"]
        np.testing.assert_allclose(bn["distance"][name]["abs"], np.abs(np.subtract(estimate, exact)), atol=1e-15)
        np.testing.assert_allclose(bn["distance"][name]["rel"], np.abs(np.subtract(estimate, exact)) / exact,
                                   rtol=1e-12)
    # precise-BN's variance leaves out the spread between batch means: it is below the truth here
    assert all(p < e for p, e in zip(bn["precise_bn"]["running_var"], bn["exact_var"]))


# -- sampling ----------------------------------------------------------------------------------------------


def test_sample_is_reproducible_uniform_and_the_same_for_any_workers(data):
    root, arrays = data
    a = compute(root, "--sample", "20", "--seed", "4", "-j", "1")
    assert a == compute(root, "--sample", "20", "--seed", "4", "-j", "2")
    assert a != compute(root, "--sample", "20", "--seed", "5")
    assert a["images"] == 20 and a["population"] == 90 and set(a["ci95"]) == {"mean", "std"}
    # the sample is the first 20 of the seeded order, whatever the list's spelling or split
    keys = sorted(str(p) for p in root.iterdir())
    order = sample_order(keys, (f"d/{os.path.basename(k)}" for k in keys), 4)[:20]
    flat = np.concatenate([arrays[int(os.path.basename(k)[:3])].reshape(-1, 3) for k in order]) / 255
    np.testing.assert_allclose(a["mean"], flat.mean(axis=0), atol=1e-12)


def test_sample_larger_than_the_population_counts_all_and_says_so(data):
    root, _ = data
    result = run("compute", root, "--sample", "500")
    report = json.loads(result.stdout)
    assert report["images"] == 90 and "counting all of them" in result.stderr
    assert report["ci95"]["mean"] == [0.0, 0.0, 0.0]  # the whole population: no sampling error


def test_until_ci_stops_early_and_its_intervals_hold_the_truth(data):
    root, _ = data
    full = compute(root)
    early = compute(root, "--until-ci", "0.05", "--seed", "1")
    assert 30 <= early["images"] < 90 and early["images"] % 32 == 0
    for key in ("mean", "std"):
        for got, want, half in zip(early[key], full[key], early["ci95"][key]):
            assert half <= 0.05 and abs(got - want) <= half
    assert early == compute(root, "--until-ci", "0.05", "--seed", "1", "-j", "1")


def test_until_ci_that_cannot_be_reached_counts_all_and_says_so(data):
    root, _ = data
    result = run("compute", root, "--until-ci", "0.000001")
    assert json.loads(result.stdout)["images"] == 90
    assert "did not reach" in result.stderr


@pytest.mark.parametrize("args", [["--sample", "5", "--shard", "0/2"], ["--sample", "5", "--until-ci", "0.1"],
                                  ["--until-ci", "0"], ["--sample", "0"], ["--trace-every", "0"]])
def test_sampling_usage_errors(data, args):
    root, _ = data
    result = run("compute", root, *args, expect=2)
    assert result.stderr.count("\n") == 1


# -- the intervals cover the truth as often as they claim ---------------------------------------------------


def _population(rng, images=2000, channels=2):
    """Per-image exact moments of a population with strong between-image variation."""
    moments = []
    for _ in range(images):
        n = int(rng.integers(50, 400))
        level = rng.integers(20, 230, channels)
        pixels = np.clip(level + rng.normal(0, 12, (n, channels)), 0, 255).astype(np.int64)
        moments.append(ExactMoments(n, tuple(int(v) for v in pixels.sum(axis=0)),
                                    tuple(int(v) for v in (pixels * pixels).sum(axis=0))))
    return moments


@pytest.mark.slow
def test_95_percent_intervals_cover_the_truth_about_95_percent_of_the_time():
    """Over 200 seeds the image-cluster intervals cover the true mean and std 92-98% of the time;
    an interval from the pixel count (1.96 σ / √pixels) would be far too narrow."""
    rng = np.random.default_rng(0)
    population = _population(rng)
    total = ExactMoments.combine(population)
    true_mean = [s / total.n / 255 for s in total.sums]
    true_std = [np.sqrt(q / total.n - (s / total.n) ** 2) / 255 for s, q in zip(total.sums, total.squares)]
    keys = [f"img{i}" for i in range(len(population))]
    index = {k: i for i, k in enumerate(keys)}
    covered = {"mean": 0, "std": 0, "naive mean": 0}
    trials = 200
    for seed in range(trials):
        sample = [population[index[k]] for k in sample_order(keys, keys, seed)[:300]]
        sampler = Sampler(len(population))
        for moments in sample:
            sampler.add(moments, 255)
        widths = sampler.half_widths()
        part = ExactMoments.combine(sample)
        mean = [s / part.n / 255 for s in part.sums]
        std = [np.sqrt(q / part.n - (s / part.n) ** 2) / 255 for s, q in zip(part.sums, part.squares)]
        for c in range(2):
            covered["mean"] += abs(mean[c] - true_mean[c]) <= widths["mean"][c]
            covered["std"] += abs(std[c] - true_std[c]) <= widths["std"][c]
            covered["naive mean"] += abs(mean[c] - true_mean[c]) <= 1.96 * std[c] / np.sqrt(part.n)
    checks = 2 * trials
    assert 0.92 * checks <= covered["mean"] <= 0.98 * checks, covered
    assert 0.92 * checks <= covered["std"] <= 0.98 * checks, covered
    assert covered["naive mean"] < 0.5 * checks, covered  # why the image is the sampling unit


def test_sampled_runs_resume_from_a_checkpoint_to_the_same_result(data, tmp_path, monkeypatch):
    root, _ = data
    args = [root, "-j", "1", "--until-ci", "0.05", "--seed", "2", "--trace", tmp_path / "t.csv", "--trace-every", "4"]
    whole = compute(*args)
    whole_trace = (tmp_path / "t.csv").read_text()
    ck = tmp_path / "ck.json"
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        run("compute", "-q", *args, "--checkpoint", ck, expect=130)
    assert compute(*args, "--checkpoint", ck) == whole
    assert (tmp_path / "t.csv").read_text() == whole_trace


def test_a_checkpoint_of_one_seed_is_not_resumed_with_another(data, tmp_path, monkeypatch):
    root, _ = data
    ck = tmp_path / "ck.json"
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        run("compute", "-q", root, "-j", "1", "--until-ci", "0.05", "--seed", "2", "--checkpoint", ck, expect=130)
    result = run("compute", "-q", root, "-j", "1", "--until-ci", "0.05", "--seed", "3", "--checkpoint", ck, expect=1)
    assert "different settings" in result.stderr


@pytest.mark.parametrize("other", ["-o", "--checkpoint"])
def test_trace_and_another_output_on_one_file_is_a_usage_error(data, tmp_path, other):
    root, _ = data
    result = run("compute", root, "--trace", tmp_path / "x", other, tmp_path / "x", expect=2)
    assert "--trace" in result.stderr and result.stderr.count("\n") == 1


# -- the same JSON from Python ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", [{"sample": 40, "seed": 3}, {"until_ci": 0.05, "seed": 1}])
def test_a_job_built_in_python_gives_the_clis_bytes(data, tmp_path, how):
    """ComputeJob owns sampling, the BatchNorm simulation, the trace and the report keys they add
    (population, sample): a Python caller gets the CLI's JSON byte for byte, and the same trace."""
    from bnstats.decoding.decode import DecodeOptions
    from bnstats.inputs.select import select
    from bnstats.jsonio import to_json
    from bnstats.running.count import CountSpec
    from bnstats.running.job import ComputeJob, Following

    root, _ = data
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in how.items()]
    printed = run("compute", "-q", root, "-j", "1", *flags, "--bn-momentum", "0.1", "--batch-size", "8",
                  "--trace", tmp_path / "cli.csv", "--percentiles", "1,50").stdout
    following = Following(**how, bn_momentum=0.1, batch_size=8, trace=str(tmp_path / "py.csv"))
    spec = CountSpec(DecodeOptions(), statistics=(("percentiles", {"ps": ["1", "50"]}),))
    job = ComputeJob(select([str(root)]), spec, workers=1, following=following)
    assert to_json(job.run()) == printed
    assert "population" in json.loads(printed) and "ci95" in json.loads(printed)
    assert (tmp_path / "py.csv").read_text() == (tmp_path / "cli.csv").read_text()


def test_a_job_refuses_moving_metrics_that_cannot_go_together(data):
    from bnstats.running.job import ComputeJob, Following, JobSettingsError

    root, _ = data
    for following, message in [(Following(bn_momentum=0.1), "--bn-momentum and --batch-size go together"),
                               (Following(sample=3, until_ci=0.1), "two ways to choose how many")]:
        with pytest.raises(JobSettingsError, match=message):
            ComputeJob([str(root / "000.png")], following=following)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sample=st.one_of(st.none(), st.integers(1, 100)), seed=st.integers(0, 2**32),
       momentum=st.one_of(st.none(), st.sampled_from(["0.1", "1", "cumulative"])), batch_size=st.integers(1, 40),
       until_ci=st.one_of(st.none(), st.sampled_from([0.01, 0.2])))
def test_any_moving_metrics_give_python_the_clis_bytes(data, sample, seed, momentum, batch_size, until_ci):
    """The class of the bug above: whatever moving metrics are asked, a Python job and the CLI agree."""
    from bnstats.inputs.select import select
    from bnstats.jsonio import to_json
    from bnstats.running.job import ComputeJob, Following

    root, _ = data
    if sample is not None and until_ci is not None:
        until_ci = None  # two ways to choose how many: refused (tested above)
    flags = [*(["--sample", sample] if sample is not None else []), *(["--until-ci", until_ci] if until_ci else []),
             *(["--bn-momentum", momentum, "--batch-size", batch_size] if momentum else []), "--seed", seed]
    printed = run("compute", "-q", root, "-j", "1", *flags).stdout
    bn = {"bn_momentum": momentum if momentum == "cumulative" else float(momentum),
          "batch_size": batch_size} if momentum else {}
    job = ComputeJob(select([str(root)]), workers=1,
                     following=Following(sample=sample, until_ci=until_ci, seed=seed, **bn))
    assert to_json(job.run()) == printed


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Three kinds of input side by side: a folder of PNGs, a tar of PNG members and an .npy of rows."""
    import io
    import tarfile

    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(5)
    (root / "imgs").mkdir()
    for i in range(25):
        Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(root / "imgs" / f"i{i:02d}.png")
    with tarfile.open(root / "z.tar", "w") as tar:
        for i in range(25):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).save(buffer, "PNG")
            info = tarfile.TarInfo(f"c{i % 2}/m{i:02d}.png")
            info.size = len(buffer.getvalue())
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
    np.save(root / "rows.npy", rng.integers(0, 256, (25, 2, 2, 3), dtype=np.uint8))
    return [str(root / "imgs"), str(root / "z.tar"), str(root / "rows.npy")]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_sample_of_mixed_inputs_counts_the_items_drawn(mixed, workers):
    """A sample's keys come in a random order, items of a folder, a tar and an array in turn: grouped as runs
    of one input (sorted keys' rule), a folder + tar sample stopped with a KeyError traceback and an array +
    folder one skipped rows as missing files (exit 0). The sample now counts exactly its drawn items, as a
    sorted run of them does; the whole population as a sample, or --until-ci never reached, is the full run."""
    from bnstats.inputs.select import select
    from bnstats.running.engine import count_selection

    selection = select(mixed)
    drawn = sample_order(selection.keys, selection.source.portable_identities(selection.keys), 3, 60)
    expected = count_selection(sorted(drawn), source=selection.source, workers=1)
    sample = compute(*mixed, "--sample", "60", "--seed", "3", "-j", workers)
    assert sample["images"] == 60 and sample["skipped"] == [] and sample["state"] == expected.stats.to_dict()
    whole = compute(*mixed, "-j", workers)
    assert whole["images"] == 75
    for everything in (["--sample", "75"], ["--until-ci", "1e-9"]):
        report = json.loads(run("compute", *mixed, *everything, "-j", workers).stdout)
        assert report["state"] == whole["state"] and report["skipped"] == []


@settings(max_examples=50, deadline=None)
@given(identities=st.lists(st.sampled_from(["a", "b", "c/x.png", "é", "d:1"]) | st.text(max_size=6), max_size=300),
       seed=st.integers(0, 5), data=st.data())
def test_the_random_order_is_held_as_positions_and_is_sorted_hashes_then_keys(identities, seed, data):
    """--until-ci's order was a list of every key with its 32-byte hash (~230 bytes an item); it is positions
    (4 bytes an item). It is the order of sorted((hash, key)), equal identities in key order; its slices
    are the list's, small ones lists (what a task is sent), long ones views that pickle without the keys
    being listed again."""
    import hashlib
    import pickle

    keys = [f"k{i:04d}" for i in range(len(identities))]
    salt = f"bnstats-sample:{seed}:".encode()
    expected = [k for _, k in sorted((hashlib.sha256(salt + i.encode("utf-8", "surrogateescape")).digest(), k)
                                     for k, i in zip(keys, identities))]
    order = sample_order(keys, identities, seed)
    assert list(order) == expected and len(order) == len(expected) and order.order.itemsize == 4
    start = data.draw(st.integers(0, len(keys)))
    stop = data.draw(st.integers(start, len(keys) + 3))
    assert list(order[start:stop]) == expected[start:stop]
    assert isinstance(order[start:stop], list)  # up to 1,024 keys: a list, as a task's keys are
    if expected:
        assert order[-1] == expected[-1] and order[0] == expected[0]
    assert list(pickle.loads(pickle.dumps(order))) == expected


def test_a_random_order_over_packed_keys_reads_each_block_once_a_window(monkeypatch):
    """Tasks take their keys in turn, 32 at a time, at random positions of a packed list: each key cost a
    block decompressed (100,000 tiny files under --until-ci: 18.3 s, against 1.2 s for the plain run). A
    window of keys read ahead in position order reads each block once a window (4.5 s)."""
    from bnstats.inputs import keys as keys_module
    from bnstats.inputs.keys import PackedKeys

    import types
    import zlib

    packed = PackedKeys.of(f"d/{i:06d}.png" for i in range(20_000))
    order = sample_order(packed, (f"{i}" for i in range(20_000)), 1)
    expected = list(order)
    reads = []
    counted = types.SimpleNamespace(decompress=lambda data: reads.append(1) or zlib.decompress(data))
    monkeypatch.setattr(keys_module, "zlib", counted)
    monkeypatch.setattr(type(order), "WINDOW", 8_192)
    drawn = [key for start in range(0, len(order), 32) for key in order[start : start + 32]]
    assert drawn == expected and sorted(drawn) == sorted(expected) == [f"d/{i:06d}.png" for i in range(20_000)]
    blocks = -(-len(packed) // PackedKeys.BLOCK)
    assert len(reads) <= 2 * blocks * (-(-len(packed) // 8_192) + 1), len(reads)  # was ~20,000
