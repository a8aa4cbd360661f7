"""Hostile reports and states for the report consumers (export, plot, merge) and the moving metrics.

Each test is a defect found by attacking them: a hand-edited report (or a
checkpoint's state) that once gave a traceback or a number no run could
have written.
"""

import json

import numpy as np
import pytest
from PIL import Image

from bnstats.statistics.states import ExactMoments, MomentState
from helpers import cli, cli_json


@pytest.fixture(scope="module")
def float_report(tmp_path_factory):
    """A float (moments-state) result, as text."""
    root = tmp_path_factory.mktemp("floats")
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.random((4, 5)).astype(np.float32), mode="F").save(root / f"{i}.tif")
    return json.dumps(cli_json("compute", root, "-q", "--mode", "native"))


@pytest.mark.parametrize("command", [("export", "{}", "-f", "torchvision"), ("merge", "{}", "{}"),
                                     ("plot", "{}", "-o", "{}.png")])
def test_a_negative_sum_of_squares_in_a_float_state_is_one_line(float_report, command, tmp_path):
    """A float state's m2 edited below 0 once raised 'math domain error' with a traceback in every consumer."""
    data = json.loads(float_report)
    data["state"]["m2"][0] = -1.0
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    result = cli(*(part.format(edited) for part in command), expect=1)
    assert "m2" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_moment_states_refuse_a_negative_sum_of_squares():
    state = MomentState.from_dict({"n": 2, "mean": [1.0], "m2": [0.5], "min": [0.5], "max": [1.5]})
    assert state.m2.tolist() == [0.5]
    with pytest.raises(ValueError, match="m2"):
        MomentState.from_dict({"n": 2, "mean": [1.0], "m2": [-0.5], "min": [0.5], "max": [1.5]})
