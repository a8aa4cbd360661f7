"""Sources hardening: what a walk cannot list, special files, file identity, changed files, extensions, classes,
portable names under the root folder, a stop while a folder is walked.

Special files (FIFOs, devices) and permission problems are tested through
real ``python -m bnstats`` processes with timeouts. The tests run as root in
CI, and root ignores ``chmod 000``: those children run without the
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH capabilities (dropped from the
bounding set before exec), so file modes apply to them as to any user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bnstats.running.count import CountSpec
from bnstats.running.engine import count_selection
from bnstats.running.job import ComputeJob
from bnstats.inputs import select as inputs
from bnstats.inputs.select import select
from helpers import drop_file_capabilities, cli, cli_in_a_fresh_interpreter, cli_json, one_line_error, run_module
from helpers import stderr_lines, stop_in

def save(path: Path, seed: int, size=(6, 5), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def tree(root: Path, layout: dict[str, int]) -> Path:
    """``layout``: folder -> number of PNGs in it."""
    seed = 0
    for folder, count in layout.items():
        for i in range(count):
            seed += 1
            save(root / folder / f"img{i}.png", seed)
    return root


def one_line(result, exit_code=1) -> str:
    assert result.returncode == exit_code, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- 1. a folder the walk cannot read ---------------------------------------------------------------


def lock(folder: Path) -> None:
    """chmod 000 ``folder``; skip the test if a child process would still read it."""
    folder.chmod(0)
    probe = subprocess.run([sys.executable, "-c", f"import os; os.listdir({str(folder)!r})"],
                           preexec_fn=drop_file_capabilities if os.geteuid() == 0 else None,
                           capture_output=True, timeout=20)
    if probe.returncode == 0:
        folder.chmod(0o755)
        pytest.skip("cannot run a process that obeys file modes here")


@pytest.fixture
def locked(tmp_path):
    """data/{a: 3, b: 2, locked: 2}, ``locked`` chmod 000."""
    data = tree(tmp_path / "data", {"a": 3, "b": 2, "locked": 2})
    lock(data / "locked")
    yield data
    (data / "locked").chmod(0o755)


@pytest.mark.slow
def test_unreadable_folder_is_listed_in_skipped(locked):
    result = run_module("compute", locked, "-j", "1", unprivileged=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 5
    (skip,) = report["skipped"]
    assert skip["path"] == str(locked / "locked")
    assert skip["error"].startswith("PermissionError")
    assert f"skipped {locked / 'locked'}: PermissionError" in result.stderr


@pytest.mark.slow
def test_unreadable_folder_with_strict_is_one_line_error(locked):
    line = one_line(run_module("compute", locked, "--strict", unprivileged=True))
    assert str(locked / "locked") in line and "PermissionError" in line


@pytest.mark.slow
def test_unreadable_folder_is_reported_by_shard_0_only(locked, tmp_path):
    outs = [tmp_path / f"part{k}.json" for k in range(2)]
    whole, *_ = cli_in_a_fresh_interpreter(  # one unprivileged process runs the three commands
        ["compute", locked, "-j", "1"],
        *(["compute", locked, "-j", "1", "--shard", f"{k}/2", "-o", out] for k, out in enumerate(outs)),
        unprivileged=True)
    parts = [json.loads(out.read_text()) for out in outs]
    assert [len(p["skipped"]) for p in parts] == [1, 0]
    merged = cli_json("merge", *outs)
    assert merged == json.loads(whole)
    assert merged["images"] == 5 and merged["skipped"][0]["path"] == str(locked / "locked")


@pytest.mark.slow
def test_no_images_because_unreadable_names_the_folder(tmp_path):
    data = tree(tmp_path / "data", {"locked": 1})
    lock(data / "locked")
    try:
        line = one_line(run_module("compute", data, unprivileged=True))
    finally:
        (data / "locked").chmod(0o755)
    assert "no images found" in line and str(data / "locked") in line and "PermissionError" in line


# -- 2. special files and huge files ----------------------------------------------------------------


@pytest.mark.slow
def test_fifo_named_like_an_image_is_skipped_not_waited_for(tmp_path):
    data = tree(tmp_path / "data", {"": 2})
    os.mkfifo(data / "x.jpg")
    result = run_module("compute", data, "-j", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 2
    assert report["skipped"] == [{"path": str(data / "x.jpg"), "error": "not a regular file (FIFO)"}]


@pytest.mark.slow
def test_fifo_named_explicitly_is_skipped(tmp_path):
    os.mkfifo(tmp_path / "x.jpg")
    save(tmp_path / "a.png", 1)
    report = json.loads(run_module("compute", tmp_path / "x.jpg", tmp_path / "a.png").stdout)
    assert report["skipped"][0]["error"] == "not a regular file (FIFO)"


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_symlink_to_dev_zero_is_skipped(tmp_path, workers):
    data = tree(tmp_path / "data", {"": 2})
    os.symlink("/dev/zero", data / "z.jpg")
    result = run_module("compute", data, "-j", workers)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["skipped"] == [
        {"path": str(data / "z.jpg"), "error": "not a regular file (character device)"}]


@pytest.mark.slow
def test_special_file_with_strict_is_one_line_error(tmp_path):
    data = tree(tmp_path / "data", {"": 1})
    os.mkfifo(data / "x.jpg")
    line = one_line(run_module("compute", data, "--strict"))
    assert "x.jpg" in line and "not a regular file (FIFO)" in line


def test_file_over_the_size_cap_is_skipped_without_reading_it(tmp_path):
    data = tree(tmp_path / "data", {"": 1})
    with open(data / "huge.png", "wb") as f:
        f.truncate((1 << 30) + 1)  # sparse: costs no disk
    report = cli_json("compute", data, "-j", "1")
    (skip,) = report["skipped"]
    assert skip["path"] == str(data / "huge.png")
    assert "too large" in skip["error"] and str((1 << 30) + 1) in skip["error"]


# -- 3. identity does not depend on how the path is spelled -----------------------------------------


def _checkpoint_after(selection_paths, cwd, ck: Path, done: int, monkeypatch):
    """A checkpoint holding the first ``done`` items, as an interrupted ``compute`` leaves it."""
    monkeypatch.chdir(cwd)
    selection = select(selection_paths)
    job = ComputeJob(selection, CountSpec(), checkpoint=str(ck), workers=1)
    tally = count_selection(selection.keys[:done], source=selection.source, workers=1)
    job.saver.save(tally, done)
    return selection


def test_checkpoint_resumes_whatever_the_path_spelling(tmp_path, monkeypatch):
    tree(tmp_path / "photos", {"a": 3, "b": 3})
    full = cli_json("compute", tmp_path / "photos", "-j", "1")
    ck = tmp_path / "run.ckpt"
    _checkpoint_after(["photos"], tmp_path, ck, 2, monkeypatch)
    monkeypatch.chdir("/")
    result = cli("compute", tmp_path / "photos", "-j", "1", "--checkpoint", ck, expect=0)
    assert "resuming from" in result.stderr
    assert json.loads(result.stdout) == full
    assert not ck.exists()


def test_files_digest_is_the_same_wherever_the_folder_lives(tmp_path, monkeypatch):
    tree(tmp_path / "one" / "photos", {"a": 3, "b": 2})
    shutil.copytree(tmp_path / "one" / "photos", tmp_path / "two" / "deeper" / "photos")
    here = cli_json("compute", tmp_path / "one" / "photos", "-j", "1")
    monkeypatch.chdir(tmp_path / "two" / "deeper")
    there = cli_json("compute", "photos", "-j", "1")
    assert here["files"] == there["files"]
    # shards computed on "different machines" merge into the whole run's digest
    part0 = cli_json("compute", "photos", "-j", "1", "--shard", "0/2")
    monkeypatch.chdir(tmp_path)
    part1 = cli_json("compute", "one/photos/", "-j", "1", "--shard", "1/2")
    (tmp_path / "p0.json").write_text(json.dumps(part0))
    (tmp_path / "p1.json").write_text(json.dumps(part1))
    assert cli_json("merge", "p0.json", "p1.json")["files"] == here["files"]


def test_same_file_names_under_two_folders_do_not_clash_in_merge(tmp_path, monkeypatch):
    tree(tmp_path / "cats", {"": 2})
    tree(tmp_path / "dogs", {"": 2})  # the same names, different folders
    monkeypatch.chdir(tmp_path)
    for k in range(2):
        (tmp_path / f"p{k}.json").write_text(json.dumps(cli_json("compute", "cats", "dogs", "--shard", f"{k}/2")))
    merged = cli_json("merge", "p0.json", "p1.json")
    assert merged["files"] == cli_json("compute", "cats", "dogs")["files"]


# -- 4. resume refuses files changed since the checkpoint -------------------------------------------


@pytest.mark.parametrize("change", ["content", "mtime"])
def test_checkpoint_refuses_a_file_changed_since(tmp_path, monkeypatch, change):
    data = tree(tmp_path / "data", {"a": 2, "b": 2})
    ck = tmp_path / "run.ckpt"
    _checkpoint_after([str(data)], tmp_path, ck, 2, monkeypatch)
    victim = data / "a" / "img0.png"
    if change == "content":
        save(victim, 999, size=(7, 5))
    else:
        st = victim.stat()
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    result = cli("compute", data, "-j", "1", "--checkpoint", ck, expect=1)
    (line,) = stderr_lines(result)
    assert "changed since the checkpoint" in line and str(ck) in line
    assert result.stdout == ""
    assert ck.exists()


def test_checkpoint_of_unchanged_files_still_resumes(tmp_path, monkeypatch):
    data = tree(tmp_path / "data", {"a": 2, "b": 2})
    ck = tmp_path / "run.ckpt"
    _checkpoint_after([str(data)], tmp_path, ck, 2, monkeypatch)
    result = cli("compute", data, "-j", "1", "--checkpoint", ck, expect=0)
    assert "resuming from" in result.stderr
    assert json.loads(result.stdout) == cli_json("compute", data, "-j", "1")


# -- 5. extensions ---------------------------------------------------------------------------------


def test_file_named_explicitly_is_tried_whatever_its_extension(tmp_path):
    save(tmp_path / "a.jfif", 1, fmt="JPEG")
    save(tmp_path / "b.image", 2, fmt="PNG")
    report = cli_json("compute", tmp_path / "a.jfif", tmp_path / "b.image")
    assert report["images"] == 2 and report["skipped"] == []


def test_jpeg_aliases_count_when_walking(tmp_path):
    for i, ext in enumerate(["jfif", "jpe", "JIF"]):
        save(tmp_path / f"x{i}.{ext}", i, fmt="JPEG")
    assert cli_json("compute", tmp_path)["images"] == 3


def test_walk_says_once_what_it_ignored(tmp_path):
    data = tree(tmp_path / "data", {"": 1, "sub": 1})
    for name in ["a.txt", "b.txt", "sub/c.TXT", "d.json", "README"]:
        (data / name).write_text("x")
    (data / ".hidden.txt").write_text("x")  # hidden: ignored silently
    (data / ".git").mkdir()
    (data / ".git" / "e.txt").write_text("x")
    result = cli("compute", data, expect=0)
    lines = [line for line in stderr_lines(result) if "ignored" in line]
    assert lines == ["bnstats: warning: ignored 5 files that are not images by extension "
                     "(.txt 3, .json 1, no extension 1)"]
    assert cli("compute", data, "-q", expect=0).stderr == ""


def test_no_note_when_nothing_was_ignored(tmp_path):
    data = tree(tmp_path / "data", {"": 2})
    assert cli("compute", data, expect=0).stderr == ""


# -- 6. folders named on the command line as classes ------------------------------------------------


def test_folders_named_are_their_own_classes(tmp_path, monkeypatch):
    tree(tmp_path / "data", {"cats": 2, "dogs": 3})
    monkeypatch.chdir(tmp_path)
    groups = cli_json("compute", "data/cats", "data/dogs/", "--group-by", "class")["groups"]
    assert {name: g["images"] for name, g in groups.items()} == {"cats": 2, "dogs": 3}


def test_nested_folders_keep_the_top_level_folder_rule(tmp_path, monkeypatch):
    tree(tmp_path / "data", {"cats": 2, "cats/deep": 1, "dogs": 3})
    monkeypatch.chdir(tmp_path / "data" / "cats")
    groups = cli_json("compute", tmp_path / "data", ".", "--group-by", "class")["groups"]
    assert {name: g["images"] for name, g in groups.items()} == {"cats": 3, "dogs": 3}
    groups = cli_json("compute", ".", "--group-by", "class")["groups"]
    assert {name: g["images"] for name, g in groups.items()} == {"cats": 2, "deep": 1}


@pytest.mark.parametrize("spelling", ["data", "./data/", "abs"])
def test_classes_of_a_folder_named_relatively_are_its_subfolders_in_workers_too(tmp_path, monkeypatch, spelling):
    # workers get the folders named as absolute paths: the walk's record of them (spelled as named) once
    # told them apart from files only for a folder named absolutely; 'data' put every image in class ''
    tree(tmp_path / "data", {"cats": 20, "dogs": 21})
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data" if spelling == "abs" else spelling
    one = cli_json("compute", path, "--group-by", "class", "-j", "1")
    two = cli_json("compute", path, "--group-by", "class", "-j", "2")
    assert {name: g["images"] for name, g in two["groups"].items()} == {"cats": 20, "dogs": 21}
    assert two["groups"] == one["groups"]


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="no fork on this platform")
def test_a_cache_lock_held_while_forking_is_free_in_the_child():
    """Zip and Parquet footer caches are shared by Dask threads; a worker forked mid-lookup must not hang."""
    from bnstats.inputs.base import ForkSafeLock

    lock = ForkSafeLock()
    with lock:
        pid = os.fork()
        if pid == 0:  # the child: the lock it inherited held is a new one
            os._exit(0 if lock._lock.acquire(timeout=2) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_a_file_is_read_in_one_request_of_its_size(tmp_path, monkeypatch):
    """One read of the file's size and a byte (the end of file seen at once): asking for more made the C
    library hand over a fresh large buffer per file, faulted in again each time. A file whose size the
    system does not report (procfs) or that grew is read on in 1 MiB requests."""
    from bnstats.inputs import reads as sources

    asked = []
    real_read = os.read
    monkeypatch.setattr(sources.os, "read", lambda fd, n: asked.append(n) or real_read(fd, n))
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(25_000))
    assert sources.read_file(str(path)) == path.read_bytes() and asked == [25_001]
    status = Path("/proc/self/status")
    if status.exists():
        asked.clear()
        assert sources.read_file(str(status)).startswith(b"Name:") and asked[:2] == [1, 1 << 20]


# -- 7. portable names under the root folder -----------------------------------------------------------------


def test_portable_names_under_the_root_folder():
    from bnstats.inputs.files import FileSource

    source = FileSource(["/"])
    assert [source.portable_identity(k) for k in ("/a.png", "/tmp/x.png")] == ["/a.png", "/tmp/x.png"]


# -- 8. a stop while a folder is walked ----------------------------------------------------------------------


def test_a_stop_while_a_folder_is_walked_exits_130(monkeypatch, images):
    folder, _ = images
    stop_in(monkeypatch, inputs, "open_and_list")
    assert one_line_error(cli("compute", folder), 130) == "bnstats: interrupted"


def test_portable_identities_found_per_folder_equal_those_found_per_key(tmp_path, monkeypatch):
    """The listing's digest names each item as portable_identity does, found once per folder: plain files in
    nested folders, a file named on its own beside a folder, TIFF pages (``FILE:PAGE`` keys)."""
    nested = tmp_path / "data" / "a" / "b"
    nested.mkdir(parents=True)
    for folder in (tmp_path / "data", tmp_path / "data" / "a", nested):
        Image.new("L", (2, 2)).save(folder / "x.png")
    Image.new("L", (2, 2)).save(tmp_path / "alone.png")
    pages = [Image.new("L", (2, 2), v) for v in (1, 2)]
    pages[0].save(tmp_path / "data" / "a" / "s.tif", save_all=True, append_images=pages[1:])
    monkeypatch.chdir(tmp_path)
    selection = select(["data", "alone.png"])
    source, keys = selection.source, list(selection.keys)
    assert any(":" in key for key in keys)  # the TIFF's pages are items
    assert list(source.portable_identities(keys)) == [source.portable_identity(k) for k in keys]
    assert "data/a/b/x.png" in list(source.portable_identities(keys))
    # files named one by one (a --files-from list), spelled every way, some under a folder also named
    Image.new("L", (2, 2)).save(tmp_path / "data" / "a" / "c:d.png")
    named = ["./data/a/b/x.png", str(tmp_path / "data" / "a" / "x.png"), "data/a/../a/c:d.png", "alone.png",
             str(tmp_path / "alone.png"), "data/./x.png", "data/a/s.tif"]
    for paths in (named, [*named, "data/a/b"]):
        selection = select(paths)
        source, keys = selection.source, list(selection.keys)
        assert list(source.portable_identities(keys)) == [source.portable_identity(k) for k in keys]


def test_a_file_named_like_a_page_key_is_that_file_not_the_tiff_page(tmp_path):
    """``b.tif:3`` named on the command line, a file of its own beside the 12-page ``b.tif`` (pages
    ``b.tif:00``..``b.tif:11``): it counted page 3 of b.tif without a word. Its digest is its own name, as
    the per-key path gives it."""
    import tifffile

    from bnstats.inputs.digests import files_digest
    from bnstats.inputs.select import select

    tifffile.imwrite(tmp_path / "b.tif", np.stack([np.full((4, 4), 10 * i, np.uint8) for i in range(12)]),
                     photometric="minisblack")
    Image.fromarray(np.full((2, 2), 255, np.uint8)).save(tmp_path / "b.tif:3", format="PNG")
    report = cli_json("compute", tmp_path / "b.tif:3", "--mode", "gray", "-j", "1")
    assert report["pixels"] == 4 and report["raw"]["mean"] == [255.0]
    both = cli_json("compute", tmp_path / "b.tif:3", tmp_path / "b.tif", "--mode", "gray", "-j", "1")
    assert both["images"] == 13 and both["pixels"] == 4 + 12 * 16
    selection = select([str(tmp_path / "b.tif:3"), str(tmp_path / "b.tif")])
    keys, source = selection.keys, selection.source
    assert files_digest(source.portable_identities(keys)) == files_digest(map(source.portable_identity, keys))
    assert sorted(source.portable_identities(keys)) == [f"b.tif:{i:02d}" for i in range(12)] + ["b.tif:3"]


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="POSIX symlinks")
def test_a_file_named_through_a_symlinked_folder_is_the_file_the_walk_finds(tmp_path, monkeypatch):
    """``data/link`` -> ``data/real``: ``data/link/a.png`` named beside the folder ``data/real`` was counted
    twice (3 images, mean 0.52 for 0.39), as was ``data/link/a.png data/real/a.png``, exit 0. A file is its
    folder's real path and its name, as the walk sees its files: once, under the spelling named first."""
    (tmp_path / "data/real").mkdir(parents=True)
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "data/real/a.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "data/real/b.png")
    (tmp_path / "data/link").symlink_to("real")
    (tmp_path / "data/real/c.png").symlink_to("a.png")  # a symlinked file is a file of its own, as before
    monkeypatch.chdir(tmp_path)
    for named in (["data/link/a.png", "data/real"], ["data/real", "data/link/a.png"],
                  ["data/link", "data/real/b.png", "data/real/c.png"],
                  ["data/link/a.png", "data/real/a.png", "data/link/b.png", "data/real/c.png"]):
        result = cli_json("compute", *named, "-j", "1")
        assert result["images"] == 3 and result["raw"]["mean"] == [400 / 3] * 3, named
    assert cli_json("compute", "data/link/a.png", "data/real/a.png", "-j", "1")["images"] == 1


def test_a_file_named_like_a_listed_page_is_refused_never_read_in_its_place(tmp_path, monkeypatch):
    """``b.tif:3`` beside a 5-page ``b.tif`` (pages ``b.tif:0``..``b.tif:4``) shares page 3's key: it was read
    twice and page 3 never (mean 78.3, not 50), or, with the folder named too, once in page 3's place (5
    images, not 6), exit 0. Now one line naming both, exit 1, however the two are named; alone, or with
    ``--stack volume`` (no page keys), or beside a TIFF whose pages it does not name, it is a file."""
    pages = [Image.fromarray(np.full((4, 4), 10 * i, np.uint8)) for i in range(5)]
    pages[0].save(tmp_path / "b.tif", save_all=True, append_images=pages[1:])
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / "b.tif:3", format="PNG")
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / "b.tif:7", format="PNG")
    monkeypatch.chdir(tmp_path)
    for named in (["b.tif", "b.tif:3"], ["b.tif:3", "b.tif"], [str(tmp_path), str(tmp_path / "b.tif:3")],
                  ["b.tif", "b.tif:7", "b.tif:3"]):
        line = one_line_error(cli("compute", *named, "--mode", "gray", "-j", "1"), 1)
        assert "b.tif:3 is a file named like page 3 of" in line and "rename the file" in line, named
    beside = cli_json("compute", "b.tif", "b.tif:7", "--mode", "gray", "-j", "1")  # no page 7: no clash
    assert beside["images"] == 6 and beside["raw"]["mean"] == [np.mean([0, 10, 20, 30, 40, 200])]
    volume = cli_json("compute", "b.tif", "b.tif:3", "--mode", "gray", "--stack", "volume", "-j", "1")
    assert volume["images"] == 2 and volume["pixels"] == 6 * 16
    assert cli_json("compute", "b.tif:3", "--mode", "gray", "-j", "1")["raw"]["mean"] == [200.0]
