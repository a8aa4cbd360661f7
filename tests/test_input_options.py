"""Input options are declared once (InputOptions fields) and are never ignored: an option that no input of the run
reads is refused in one line (exit 2), whatever the kinds of input named."""

from __future__ import annotations

import dataclasses
import io
import tarfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import cli, cli_json, stderr_lines
from bnstats.inputs.base import InputOptions
from bnstats.inputs.select import OptionNotRead, select

# what each option applies to, written from the user's side (not from the sources' declarations)
GIVEN = {"ext": ("png",), "key": "x", "channel_axis": 3, "column": "image",
         "storage_options": (("anon", True),)}
FLAGS = {"ext": ["--ext", "png"], "key": ["--key", "x"], "channel_axis": ["--channel-axis", "3"],
         "column": ["--column", "image"], "storage_options": ["--storage-option", "anon=true"]}
READ_BY = {"ext": {"folder", "tar"}, "key": {"npz"}, "channel_axis": {"npy", "npz"}, "column": {"parquet"},
           "storage_options": set()}  # every input here is local: no URL reads storage options


def png_bytes(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (value, value, value)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """One input of each kind: a folder of images, an .npy, an .npz (array ``x``), a tar of images and a Parquet
    file (when pyarrow is installed)."""
    root = tmp_path_factory.mktemp("kinds")
    (root / "folder").mkdir()
    (root / "folder" / "a.png").write_bytes(png_bytes(10))
    rows = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    np.save(root / "rows.npy", rows)
    np.savez(root / "rows.npz", x=rows)
    with tarfile.open(root / "shard.tar", "w") as tar:
        data = png_bytes(20)
        info = tarfile.TarInfo("s/b.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    paths = {"folder": root / "folder", "npy": root / "rows.npy", "npz": root / "rows.npz", "tar": root / "shard.tar"}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return paths
    pq.write_table(pa.table({"image": [png_bytes(30)]}), root / "t.parquet")
    paths["parquet"] = root / "t.parquet"
    return paths


@pytest.mark.parametrize("name", sorted(FLAGS))
@pytest.mark.parametrize("kind", ["folder", "npy", "tar"])
def test_an_option_no_input_reads_is_refused_in_one_line(kinds, name, kind):
    """``--key`` on a folder, ``--column`` on an array, ``--ext`` on an array named directly: all were counted
    as if the option had not been given; now one usage line names the option, what it applies to, the input."""
    if kind in READ_BY[name]:
        pytest.skip("this kind reads the option")
    result = cli("compute", "-q", *FLAGS[name], kinds[kind], expect=2)
    flag = FLAGS[name][0]
    [line] = stderr_lines(result)
    assert line.startswith(f"Error: {flag} applies to {InputOptions.__dataclass_fields__[name].metadata['applies_to']}"
                           f", and no input here is one ({kinds[kind]}): leave it out. See ")


def test_an_option_is_taken_when_one_input_of_a_mix_reads_it(kinds):
    """A folder with an .npz: ``--key`` applies to the .npz (the folder does not need it)."""
    both = cli_json("compute", "-q", "--key", "x", kinds["folder"], kinds["npz"])
    assert both["images"] == 3


def test_key_is_refused_for_an_npy_alone(kinds):
    """An .npy holds one array of no name: ``--key`` would be ignored there."""
    result = cli("compute", "-q", "--key", "x", kinds["npy"], expect=2)
    assert "--key applies to arrays (.npz, .h5, .zarr)" in result.stderr


def test_compare_refuses_the_same_way(kinds):
    """The options are the commands' shared input options: compare refuses as compute does."""
    result = cli("compare", "--column", "image", kinds["folder"], "--resize", "8", expect=2)
    assert "--column applies to Parquet files" in result.stderr


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.sets(st.sampled_from(["folder", "npy", "npz", "tar", "parquet"]), min_size=1),
       given_options=st.sets(st.sampled_from(sorted(GIVEN)), min_size=1))
def test_property_an_option_is_refused_exactly_when_no_input_reads_it(kinds, chosen, given_options):
    """The class of bug: for any mix of kinds and any options, ``select`` refuses iff some option given is read by
    none of the kinds named, and otherwise lists the inputs with the options applied."""
    chosen = {kind for kind in chosen if kind in kinds}
    if not chosen:
        return
    options = InputOptions(**{name: GIVEN[name] for name in given_options})
    unread = sorted(name for name in given_options if not READ_BY[name] & chosen)
    paths = [str(kinds[kind]) for kind in sorted(chosen)]
    if unread:
        with pytest.raises(OptionNotRead) as refused:
            select(paths, options=options)
        assert any(FLAGS[name][0] in str(refused.value) for name in unread)
        assert "\n" not in str(refused.value)
    else:
        assert len(select(paths, options=options)) > 0


def test_each_declared_option_is_one_click_option_with_its_help():
    """The click options come from the fields: every declared flag is listed once in ``--help``, with its help."""
    text = cli("compute", "--help").output
    for field in dataclasses.fields(InputOptions):
        if "flag" in field.metadata:
            assert text.count(field.metadata["flag"] + " ") == 1, field.name
            assert field.metadata["help"].split()[0] in text


def test_repeated_options_are_joined_into_the_field(kinds):
    """``--ext jpg,png --ext gif`` is one tuple of extensions; ``--storage-option`` pairs stay pairs."""
    from bnstats.cli.options import Inputs

    inputs = Inputs.from_options((), None, None, ext=(("jpg", "png"), ("gif",)), key=None, channel_axis=None,
                                 column=None, storage_options=(("anon", True), ("a", 1)))
    assert inputs.options == InputOptions(ext=("jpg", "png", "gif"), storage_options=(("anon", True), ("a", 1)))


def test_ext_counts_only_its_extensions_among_the_other_kinds_found_in_folders(tmp_path):
    """--ext png took .npy rows and extensionless DICOM series found in the folder too, without a word."""
    import numpy as np
    from PIL import Image

    (tmp_path / "d").mkdir()
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "d" / "a.png")
    np.save(tmp_path / "d" / "rows.npy", np.ones((2, 4, 5), np.uint8))
    only = cli_json("compute", tmp_path / "d", "--ext", "png", "--mode", "gray", "-j", "1")
    assert only["images"] == 1 and only["pixels"] == 20
    both = cli_json("compute", tmp_path / "d", "--ext", "png,npy", "--mode", "gray", "-j", "1")
    assert both["images"] == 3
