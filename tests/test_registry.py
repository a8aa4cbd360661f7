"""The registry: built-ins loaded on first lookup, plugins through entry points, register() for Python callers.

The fake plugins live in ``tests/plugins/bnstats_fake_plugin`` (one file each: an export format, an input
kind, a statistic with a setting). From Python they are registered with ``registry.register``; from the
command line they are "installed" as a separate package: its ``*.dist-info`` (``METADATA`` and
``entry_points.txt``, written from its pyproject) is put on a subprocess's PYTHONPATH, which is all
``importlib.metadata`` needs to find the entry points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from bnstats import registry
from bnstats.decoding.options import DecodeOptions
from bnstats.inputs.select import select
from bnstats.jsonio import ReportError
from bnstats.output.exports import render
from bnstats.output.merge import merge_reports
from bnstats.output.reading import Report
from bnstats.output.report import build_report
from bnstats.output.state import tally_from_dict, tally_to_dict
from bnstats.running.count import CountSpec
from bnstats.running.engine import count_selection
from helpers import cli, cli_json

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = Path(__file__).resolve().parent / "plugins" / "bnstats_fake_plugin"
sys.path.insert(0, str(PLUGIN))  # the plugin's modules, for the tests that register them from Python

from bnstats_fake.export import fake_csv  # noqa: E402
from bnstats_fake.source import FakeSource, fake_image  # noqa: E402
from bnstats_fake.statistic import Above, reference  # noqa: E402


def _fake_file(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _fake_lines(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{int(s)} {int(h)} {int(w)}" for s, h, w in zip(rng.integers(0, 10**6, count),
                                                             rng.integers(1, 9, count), rng.integers(1, 9, count))]


def _pixels(lines: list[str]) -> np.ndarray:
    return np.concatenate([fake_image(line).pixels.reshape(-1, 3) for line in lines]).astype(np.float64)


@pytest.fixture
def registered():
    """The three fake plugins registered from Python for one test (and forgotten after)."""
    registry.register("exports", "fake-csv", fake_csv)
    registry.register("sources", "fake", FakeSource)
    registry.register("statistics", "above", Above)
    yield
    for group, name in (("exports", "fake-csv"), ("sources", "fake"), ("statistics", "above")):
        registry.unregister(group, name)


# -- the registry itself ----------------------------------------------------------------------------


def test_builtins_are_listed_as_strings_and_loaded_on_lookup():
    for group, table in registry.BUILTINS.items():
        assert all(isinstance(target, str) and ":" in target for target in table.values()), group
        assert list(registry.load(group))[: len(table)] == list(table)
    assert registry.get("observers", "ci95").name == "ci95"
    assert registry.get("statistics", "covariance").name == "covariance"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(registry.UnknownName, match="unknown export 'nope'; known: torchvision, hf"):
        registry.get("exports", "nope")
    with pytest.raises(ValueError, match="unknown registry group"):
        registry.load("decoders")


def test_register_and_unregister_leave_the_builtins():
    registry.register("exports", "json", fake_csv)  # a Python caller may replace one by name
    try:
        assert registry.get("exports", "json") is fake_csv
    finally:
        registry.unregister("exports", "json")
    assert registry.get("exports", "json").__name__ == "plain_json"


def test_a_plugin_that_does_not_load_is_left_out_with_a_warning(tmp_path):
    site = _install(tmp_path, {"bnstats.exports": {"broken": "no_such_module:render"}})
    code = "from bnstats import registry; print(registry.names('exports'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=_env(site))
    assert done.returncode == 0, done.stderr
    assert "'broken'" not in done.stdout and "torchvision" in done.stdout
    assert "broken" in done.stderr and "fix or uninstall it" in done.stderr


# -- the fake plugins, registered from Python -----------------------------------------------------


def test_fake_export_from_python(registered, sample_data):
    report = cli_json("compute", sample_data, "-q")
    text = render(report, "fake-csv")
    assert text.splitlines()[0] == "channel,mean,std"
    assert text.splitlines()[1] == f"R,{report['mean'][0]!r},{report['std'][0]!r}"


def test_fake_source_from_python(registered, tmp_path):
    lines = _fake_lines(30, seed=1)
    fake = _fake_file(tmp_path / "x.fake", lines)
    report = cli_json("compute", fake, "-q")
    flat = _pixels(lines)
    np.testing.assert_allclose(report["mean"], flat.mean(axis=0) / 255, rtol=0, atol=1e-12)
    np.testing.assert_allclose(report["std"], flat.std(axis=0) / 255, rtol=0, atol=1e-12)
    assert report["images"] == 30 and report["pixels"] == len(flat)


def test_fake_statistic_with_a_setting_from_python(registered, tmp_path):
    lines = _fake_lines(24, seed=2)
    selection = select([str(_fake_file(tmp_path / "x.fake", lines))])
    fake_pixels = _pixels(lines)
    for level in (0, 100, 255):
        spec = CountSpec(DecodeOptions(), statistics=(("above", {"level": level}),))
        tallies = [count_selection(selection.keys, source=selection.source, spec=spec, workers=w) for w in (1, 2)]
        reports = [build_report(t, spec.options, selection.coverage()) for t in tallies]
        assert reports[0] == reports[1]
        assert reports[0]["above"] == {"level": level, "counts": reference(fake_pixels, level)}
        assert reports[0]["statistics"]["above"]["settings"] == {"level": level}  # the state carries it
        back = tally_from_dict(json.loads(json.dumps(tally_to_dict(tallies[0]))))
        assert back.extra["above"].settings() == {"level": level}
    assert spec.settings()["statistics"] == [{"name": "above", "settings": {"level": 255}}]  # checkpoints


def test_merge_compares_a_statistics_settings(registered, tmp_path):
    lines = _fake_lines(20, seed=3)
    fake = str(_fake_file(tmp_path / "x.fake", lines))
    halves = [select([fake], (k, 2)) for k in range(2)]

    def part(k: int, level: int) -> Report:
        spec = CountSpec(statistics=(("above", {"level": level}),))
        tally = count_selection(halves[k].keys, source=halves[k].source, spec=spec, workers=1)
        return Report(json.loads(json.dumps(build_report(tally, spec.options, halves[k].coverage()))), f"part{k}")

    merged = merge_reports([part(0, 50), part(1, 50)])
    assert merged["above"] == {"level": 50, "counts": reference(_pixels(lines), 50)}
    with pytest.raises(ReportError, match=r"different level \(part0: level=50; part1: level=60\)"):
        merge_reports([part(0, 50), part(1, 60)])


def test_a_statistic_refuses_settings_it_does_not_take(registered):
    with pytest.raises(ValueError, match="does not take the settings"):
        CountSpec(statistics=(("covariance", {"level": 3}),))
    with pytest.raises(ValueError, match="unknown statistic 'nope'; known: stats, covariance, percentiles"):
        CountSpec(statistics=("nope",))
    with pytest.raises(ValueError, match="always counted"):
        CountSpec(statistics=("stats",))


# -- the plugins installed as a separate package ----------------------------------------------------


def _install(tmp_path: Path, groups: dict[str, dict[str, str]] | None = None) -> Path:
    """A site folder holding the plugin's dist-info (its entry points from its pyproject, or ``groups``)."""
    if groups is None:
        with open(PLUGIN / "pyproject.toml", "rb") as f:
            groups = tomllib.load(f)["project"]["entry-points"]
    site = tmp_path / "site"
    info = site / "bnstats_fake_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bnstats-fake-plugin\nVersion: 0.1\n")
    text = "".join(f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items()) + "\n"
                   for group, points in groups.items())
    (info / "entry_points.txt").write_text(text)
    return site


def _env(site: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN), str(ROOT)])}


def _bnstats(*args, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnstats", *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=env, input=stdin)


@pytest.mark.slow
def test_installed_plugins_work_from_the_command_line(tmp_path, sample_data):
    env = _env(_install(tmp_path))
    lines = _fake_lines(12, seed=4)
    fake = _fake_file(tmp_path / "x.fake", lines)
    computed = _bnstats("compute", fake, "-q", "-o", tmp_path / "fake.json", env=env)
    assert computed.returncode == 0, computed.stderr
    report = json.loads((tmp_path / "fake.json").read_text())
    np.testing.assert_allclose(report["mean"], _pixels(lines).mean(axis=0) / 255, rtol=0, atol=1e-12)
    assert report["images"] == 12
    exported = _bnstats("export", tmp_path / "fake.json", "--format", "fake-csv", env=env)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == fake_csv({**report, "mean": report["mean"], "std": report["std"]})
    helped = _bnstats("export", "--help", env=env)
    assert "fake-csv" in helped.stdout
    # without the plugin, the same commands refuse in one line each
    plain = {**os.environ, "PYTHONPATH": str(ROOT)}
    refused = _bnstats("export", tmp_path / "fake.json", "--format", "fake-csv", env=plain)
    assert refused.returncode == 2 and "fake-csv" in refused.stderr and "Traceback" not in refused.stderr


# -- the same answer in a fresh interpreter, whatever was imported --------------------------------


IMPORTS = ["", "import bnstats.observers.sampling", "import bnstats.statistics.covariance",
           "import bnstats.output.exports", "import bnstats.inputs.archives"]


@pytest.mark.slow
def test_registry_lookups_do_not_depend_on_what_was_imported():
    code = ("{imports}\nfrom bnstats import registry\n"
            "print({{g: registry.names(g) for g in registry.GROUPS}})")
    outputs = set()
    for imports in IMPORTS:
        done = subprocess.run([sys.executable, "-c", code.format(imports=imports)], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1


@pytest.mark.slow
def test_merge_export_and_resume_in_a_fresh_interpreter(tmp_path, sample_data):
    """merge recognises a sample (ci95), merges covariance and exports, with nothing imported beforehand."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parts = []
    for k in range(2):
        parts.append(tmp_path / f"part{k}.json")
        cli("compute", sample_data, "-q", "--shard", f"{k}/2", "--covariance", "--percentiles", "5", "-o",
            parts[-1], expect=0)
    whole = cli("compute", sample_data, "-q", "--covariance", "--percentiles", "5", expect=0).stdout
    merged = _bnstats("merge", *parts, env=env)
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout == whole
    sampled = tmp_path / "sampled.json"
    cli("compute", sample_data, "-q", "--sample", "5", "-o", sampled, expect=0)
    refused = _bnstats("merge", sampled, parts[0], env=env)
    assert refused.returncode == 1 and "is a sample" in refused.stderr
    (tmp_path / "merged.json").write_text(merged.stdout)
    exported = _bnstats("export", tmp_path / "merged.json", "--format", "timm", env=env)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == cli("export", tmp_path / "merged.json", "-f", "timm", expect=0).stdout
    code = ("import sys\nfrom bnstats.output.merge import merge_reports\nfrom bnstats.output.reading import Report\n"
            "from bnstats.jsonio import to_json\n"
            "print(to_json(merge_reports([Report.read(p) for p in sys.argv[1:]])), end='')")
    by_python = subprocess.run([sys.executable, "-c", code, *map(str, parts)], capture_output=True, text=True,
                               timeout=60, env=env)
    assert by_python.returncode == 0, by_python.stderr
    assert json.loads(by_python.stdout) == json.loads(whole)


@pytest.mark.slow
def test_checkpoint_with_statistics_resumes_in_a_fresh_interpreter(tmp_path, sample_data):
    """A checkpoint holding covariance and percentiles states is read back by name from the registry."""
    from bnstats.running.job import ComputeJob

    selection = select([str(sample_data)])
    spec = CountSpec(statistics=("covariance", ("percentiles", {"ps": ["5", "95"]})))
    ck = tmp_path / "ck.json"
    saver = ComputeJob(selection, spec, checkpoint=str(ck)).saver
    saver.save(count_selection(selection.keys[:7], source=selection.source, spec=spec, workers=1), 7)
    saver.unlock()
    resumed = _bnstats("compute", sample_data, "-q", "--covariance", "--percentiles", "5,95", "--checkpoint", ck,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == cli("compute", sample_data, "-q", "--covariance", "--percentiles", "5,95",
                                 expect=0).stdout


def test_no_plugin_declared_skips_importlib_metadata(tmp_path, monkeypatch):
    """Plugins are looked up with importlib.metadata only where some distribution may declare one: a site
    folder whose dist-info names a bnstats group, or a path entry that is not a folder (a zip)."""
    site = tmp_path / "site"
    other = site / "other-1.0.dist-info"
    other.mkdir(parents=True)
    (other / "entry_points.txt").write_text("[console_scripts]\nother = other:main\n")
    monkeypatch.setattr(sys, "path", [str(site), str(tmp_path / "missing")])
    assert registry._scan_for_plugins() is False
    _install(tmp_path)  # tmp_path/site gains a dist-info declaring bnstats entry points
    assert registry._scan_for_plugins() is True
    archive = tmp_path / "plugins.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))
    monkeypatch.setattr(sys, "path", [str(archive)])
    assert registry._scan_for_plugins() is True


def test_plugins_in_an_unzipped_egg_or_an_upper_case_dist_info_are_still_looked_up(tmp_path, monkeypatch):
    """importlib.metadata reads an unzipped ``.egg`` folder on the path (its ``EGG-INFO``) and matches
    ``.dist-info``/``.egg-info`` names in any case: the scan that skips it must see them too, or such a
    plugin is silently not found."""
    egg = tmp_path / "plug-1.0-py3.11.egg"
    (egg / "EGG-INFO").mkdir(parents=True)
    (egg / "EGG-INFO" / "entry_points.txt").write_text("[bnstats.exports]\nfake = fake:Export\n")
    monkeypatch.setattr(sys, "path", [str(egg)])
    assert registry._scan_for_plugins() is True
    upper = tmp_path / "site" / "Plug-1.0.DIST-INFO"
    upper.mkdir(parents=True)
    (upper / "entry_points.txt").write_text("[bnstats.exports]\nfake = fake:Export\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site")])
    assert registry._scan_for_plugins() is True
