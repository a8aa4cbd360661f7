"""Statistics built from a name and settings: the settings travel with the state and decide merges.

The class of bug: a statistic's settings threaded by hand (``--percentiles`` through four modules) and
compared as a special case. Now a statistic is ``build(name, settings)``; reports and checkpoints carry
the settings (percentiles by their report keys, others beside their state) and merge compares them for
every statistic alike.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from bnstats import registry
from bnstats.jsonio import ReportError, to_json
from bnstats.inputs.select import select
from bnstats.output.merge import merge_reports
from bnstats.output.reading import Report
from bnstats.output.report import build_report
from bnstats.output.state import tally_from_dict, tally_to_dict
from bnstats.running.count import CountSpec
from bnstats.running.engine import count_selection
from bnstats.statistics.base import build, restore, state_dict
from bnstats.statistics.percentiles import Percentiles, normalize_percentile

sys.path.insert(0, str(Path(__file__).resolve().parent / "plugins" / "bnstats_fake_plugin"))
from bnstats_fake.statistic import Above  # noqa: E402

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))

percentile = st.one_of(st.integers(0, 100).map(str), st.decimals(0, 100, places=2).map(str),
                       st.sampled_from(["50.0", " .5", "99.50", "0", "100"]))
percentile_lists = st.lists(percentile, max_size=4)


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """Two halves of a folder of six small RGB PNGs, as selections that merge."""
    folder = tmp_path_factory.mktemp("params")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return [select([str(folder)], (k, 2)) for k in range(2)]


@pytest.fixture
def above():
    registry.register("statistics", "above", Above)
    yield
    registry.unregister("statistics", "above")


def _part(selection, spec: CountSpec, name: str) -> Report:
    tally = count_selection(selection.keys, source=selection.source, spec=spec, workers=1)
    return Report(json.loads(to_json(build_report(tally, spec.options, selection.coverage()))), name)


def _keys(ps) -> list[str] | None:
    """The report keys of ``ps``, or None when it is not a valid list (a percentile twice)."""
    keys = [normalize_percentile(p) for p in ps]
    return keys if len(set(keys)) == len(keys) else None


@FAST
@given(ps=percentile_lists)
def test_percentiles_shorthand_is_the_statistic(ps):
    keys = _keys(ps)
    if keys is None:
        with pytest.raises(ValueError, match="given twice"):
            CountSpec(percentiles=ps)
        return
    spec = CountSpec(percentiles=ps)
    assert spec == CountSpec(statistics=(("percentiles", {"ps": ps}),)) if ps else spec == CountSpec()
    assert spec.percentiles == tuple(keys)
    # a checkpoint's fingerprint as before statistics had settings
    assert spec.settings().get("percentiles") == (keys or None)
    assert "statistics" not in spec.settings()


@FAST
@given(a=percentile_lists, b=percentile_lists)
def test_merge_accepts_percentiles_iff_the_same(halves, a, b):
    if _keys(a) is None or _keys(b) is None:
        return
    first = _part(halves[0], CountSpec(percentiles=a), "a")
    second = _part(halves[1], CountSpec(percentiles=b), "b")
    if _keys(a) == _keys(b):
        merged = merge_reports([first, second])
        assert list(merged.get("percentiles", {})) == _keys(a)
    else:
        with pytest.raises(ReportError, match="different --percentiles"):
            merge_reports([first, second])


@FAST
@given(a=st.integers(0, 255), b=st.integers(0, 255), covariance=st.booleans())
def test_merge_compares_any_statistics_settings(above, halves, a, b, covariance):
    extra = ("covariance",) if covariance else ()
    first = _part(halves[0], CountSpec(statistics=(*extra, ("above", {"level": a}))), "a")
    second = _part(halves[1], CountSpec(statistics=(*extra, ("above", {"level": b}))), "b")
    if a == b:
        assert merge_reports([first, second])["above"]["level"] == a
    else:
        with pytest.raises(ReportError, match=f"different level .a: level={a}; b: level={b}."):
            merge_reports([first, second])


@FAST
@given(level=st.integers(0, 255), ps=percentile_lists, seed=st.integers(0, 2**32 - 1))
def test_settings_travel_with_the_state(above, halves, level, ps, seed):
    """Report -> tally and checkpoint -> tally keep every statistic's settings (and its numbers)."""
    if _keys(ps) is None:
        return
    spec = CountSpec(statistics=(("above", {"level": level}),), percentiles=ps)
    tally = count_selection(halves[0].keys, source=halves[0].source, spec=spec, workers=1)
    want = {name: s.settings() for name, s in tally.extra.items()}
    assert want["above"] == {"level": level}
    from_checkpoint = tally_from_dict(json.loads(json.dumps(tally_to_dict(tally))))
    report = Report(json.loads(to_json(build_report(tally, spec.options, halves[0].coverage()))))
    for back in (from_checkpoint, report.tally()):
        assert {name: s.settings() for name, s in back.extra.items()} == want
    restored = restore("above", json.loads(json.dumps(state_dict(tally.extra["above"]))))
    assert restored.report() == tally.extra["above"].report()


def test_build_and_restore_refuse_damage_in_one_line():
    with pytest.raises(ValueError, match="does not take the settings"):
        build("percentiles", {"levels": 3})
    with pytest.raises(ValueError, match="settings of statistic 'covariance' must be an object"):
        restore("covariance", {"kind": None, "settings": [1]})
    with pytest.raises(ValueError, match="outside 0..100"):
        Percentiles.from_dict({"settings": {"ps": ["120"]}})
    with pytest.raises(ValueError, match="unknown statistic 'nope'"):
        restore("nope", {})


def test_a_damaged_statistic_setting_in_a_report_is_one_line(halves, tmp_path):
    data = json.loads(to_json(build_report(
        count_selection(halves[0].keys, source=halves[0].source, spec=CountSpec(statistics=("covariance",)), workers=1),
        CountSpec().options, halves[0].coverage())))
    data["statistics"]["covariance"]["settings"] = {"bins": 4}
    with pytest.raises(ReportError, match="damaged.json: bad statistics .statistic 'covariance' has settings"):
        Report(data, "damaged.json")
