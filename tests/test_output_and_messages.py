"""Output files (-o, --checkpoint, --trace), stdout, usage errors, --help layout, and the progress bar.

Special files (device nodes, FIFOs, /proc/self/fd links), closed stdout,
broken pipes and permissions are tested through real ``python -m bnstats``
processes; the rest in-process with click's CliRunner. The progress bar is drawn on a stand-in
terminal of any size (0x0, one row), and once on a real pseudo-terminal of 0x0.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import FakeTerminal, cli, one_line_error, run_module
from bnstats.cli.main import main
from bnstats.jsonio import write_atomic

SAMPLE_IMAGES = sum(
    1 for p in (Path(__file__).resolve().parent.parent / "sample_data").rglob("*") if p.is_file() and p.name[0] != "."
)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# -- 1. -o onto special files and symlinks -------------------------------------------------------

@pytest.mark.slow
def test_output_to_device_node_writes_into_it(sample_data, tmp_path):
    node = tmp_path / "fakenull"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own
    except PermissionError:
        pytest.skip("mknod needs root")
    proc = run_module("compute", sample_data, "-q", "-o", node)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.lstat(node).st_mode), "the device node was replaced by a file"
    assert os.listdir(tmp_path) == ["fakenull"]  # no temp file left behind


@pytest.mark.slow
def test_output_to_fifo_writes_into_it(sample_data, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # Our own reader and writer first: bnstats' open() then cannot block, and the
    # reader sees EOF only once we close our writer, after bnstats exited.
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(rfd, True)
    wfd = os.open(fifo, os.O_WRONLY)
    chunks: list[bytes] = []

    def read_all():
        while chunk := os.read(rfd, 65536):
            chunks.append(chunk)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    try:
        proc = run_module("compute", sample_data, "-q", "-o", fifo)
    finally:
        os.close(wfd)
        reader.join(10)
        os.close(rfd)
    assert not reader.is_alive()
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a file"
    assert json.loads(b"".join(chunks))["images"] == SAMPLE_IMAGES


@pytest.mark.slow
def test_output_waits_for_a_fifo_reader(sample_data, tmp_path):
    """As with ``> fifo``: bnstats blocks in open() until someone reads."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "bnstats", "compute", os.fspath(sample_data), "-q", "-o",
                             os.fspath(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)  # a report of 3 images takes well under a second
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        with open(fifo, "rb") as f:  # unblocks bnstats
            data = f.read()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(data)["images"] == SAMPLE_IMAGES


def test_output_through_symlink_keeps_the_link(sample_data, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("{}\n")
    link = tmp_path / "link.json"
    link.symlink_to("real.json")
    cli("compute", sample_data, "-q", "-o", link, expect=0)
    assert link.is_symlink() and os.readlink(link) == "real.json"
    assert json.loads(target.read_text())["images"] == SAMPLE_IMAGES
    assert sorted(os.listdir(tmp_path)) == ["link.json", "real.json"]


def test_dangling_symlink_creates_its_target(sample_data, tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to("new.json")
    cli("compute", sample_data, "-q", "-o", link, expect=0)
    assert link.is_symlink()
    assert json.loads((tmp_path / "new.json").read_text())["images"] == SAMPLE_IMAGES


@pytest.mark.slow
def test_output_to_stdout_style_symlink_is_written_not_swallowed(sample_data, tmp_path):
    """``-o /dev/stdout`` style: a link to /proc/self/fd/1 (a pipe here)."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    proc = run_module("compute", sample_data, "-q", "-o", link)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    assert json.loads(proc.stdout)["images"] == SAMPLE_IMAGES


@pytest.mark.slow
def test_output_to_proc_fd_writes_to_that_descriptor(sample_data):
    proc = run_module("compute", sample_data, "-q", "-o", "/proc/self/fd/1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == SAMPLE_IMAGES


def test_replaced_file_keeps_owner_and_mode(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    try:
        os.chown(path, 65534, 65534)
    except PermissionError:
        pytest.skip("chown to another user needs root")
    write_atomic(os.fspath(path), "new\n")
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert path.read_text() == "new\n"


def test_checkpoint_through_symlink_saves_and_resumes(sample_data, tmp_path):
    from bnstats.running.checkpoint import Checkpoint
    from bnstats.statistics.tally import Tally

    (tmp_path / "ck.json").write_text("")
    link = tmp_path / "link.ckpt"
    link.symlink_to("ck.json")
    (tmp_path / "ck.json").unlink()
    saver = Checkpoint(os.fspath(link), ["a", "b"], {"mode": "rgb"})
    saver.save(Tally(), 1)
    assert link.is_symlink() and (tmp_path / "ck.json").is_file()
    tally, done, _ = saver.load()
    assert done == 1


# -- 2. --checkpoint and -o on the same file -------------------------------------------------------

@pytest.mark.parametrize("how", ["same", "symlink", "relative"])
def test_checkpoint_same_as_output_is_usage_error(sample_data, tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run.json"
    ckpt = {"same": out, "relative": Path("run.json"), "symlink": tmp_path / "link.ckpt"}[how]
    if how == "symlink":
        ckpt.symlink_to("run.json")
    result = cli("compute", sample_data, "-q", "--checkpoint", ckpt, "-o", out, expect=2)
    assert result.stdout == ""
    assert "--checkpoint" in one_line(result.stderr)
    assert not out.exists()


# -- 3. unwritable places: refused before the run, naming the -o path --------------------------------

def _drop_file_permission_override():
    """In the child: root loses the capabilities that ignore file permissions."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec
            os._exit(99)


def run_unprivileged(*args) -> subprocess.CompletedProcess:
    proc = run_module(*args, preexec_fn=_drop_file_permission_override)
    if proc.returncode == 99:
        pytest.skip("cannot drop root's file capabilities here")
    return proc


@pytest.fixture()
def locked(tmp_path):
    """A folder nobody may create files in (restored afterwards so tmp_path can be cleaned)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "readonly.json").write_text("{}\n")
    os.chmod(folder / "readonly.json", 0o444)
    os.chmod(folder, 0o555)
    yield folder
    os.chmod(folder, 0o755)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["-o", "--checkpoint"])
def test_unwritable_folder_fails_before_the_run(sample_data, locked, which):
    target = locked / "out.json"
    proc = run_unprivileged("compute", sample_data, "-q", which, target)
    assert proc.returncode == 1
    assert proc.stdout == ""
    line = one_line(proc.stderr)
    assert line.startswith("Error: ") and str(target) in line
    assert ".bnstats-" not in line  # not the temp file


@pytest.mark.slow
def test_unwritable_existing_target_fails_before_the_run(sample_data, locked, tmp_path):
    os.chmod(locked, 0o755)  # the folder is writable, the file is not
    target = locked / "readonly.json"
    proc = run_unprivileged("compute", sample_data, "-q", "-o", target)
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert str(target) in line
    assert target.read_text() == "{}\n"


@pytest.mark.slow
def test_merge_into_unwritable_folder(stats_file, locked):
    target = locked / "merged.json"
    proc = run_unprivileged("merge", stats_file, "-o", target)
    assert proc.returncode == 1
    assert str(target) in one_line(proc.stderr)


def test_missing_output_folder_is_one_line(stats_file, tmp_path):
    result = cli("merge", stats_file, "-o", tmp_path / "nope" / "out.json", expect=1)
    assert "nope" in one_line(result.stderr)


# -- 4. stdout closed, broken pipe -----------------------------------------------------------------

def _close_stdout():
    os.close(1)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["compute", "merge", "export"])
def test_closed_stdout_is_an_error(sample_data, stats_file, command):
    args = {"compute": ["compute", sample_data, "-q"], "merge": ["merge", stats_file],
            "export": ["export", stats_file, "-f", "torchvision"]}[command]
    proc = run_module(*args, stdout=None, preexec_fn=_close_stdout)
    assert proc.returncode == 1
    assert "stdout" in one_line(proc.stderr)


@pytest.mark.slow
def test_closed_stdout_with_output_file_is_fine(sample_data, tmp_path):
    out = tmp_path / "out.json"
    proc = run_module("compute", sample_data, "-q", "-o", out, stdout=None, preexec_fn=_close_stdout)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["images"] == SAMPLE_IMAGES


def _close_stderr():
    os.close(2)


@pytest.mark.slow
def test_closed_stderr_runs_as_usual(sample_data, stats_file):
    """``2>&-``: Python starts with no sys.stderr, and the progress bar's isatty() raised a traceback (one
    nobody saw) and exit 1 with the JSON never written. Warnings and progress now go nowhere; the result is
    printed, and a usage error still exits 2."""
    proc = run_module("compute", sample_data, stderr=None, preexec_fn=_close_stderr)
    assert proc.returncode == 0 and json.loads(proc.stdout)["images"] == SAMPLE_IMAGES
    assert run_module("export", stats_file, "-f", "nope", stderr=None, preexec_fn=_close_stderr).returncode == 2


@pytest.mark.slow
@pytest.mark.parametrize("command", ["compute", "export"])
def test_broken_pipe_exits_quietly(sample_data, stats_file, command):
    args = {"compute": ["compute", sample_data, "-q"], "export": ["export", stats_file, "-f", "json"]}[command]
    r, w = os.pipe()
    os.close(r)  # the reader is gone before bnstats writes: like `| head -c 0`
    try:
        proc = run_module(*args, stdout=w)
    finally:
        os.close(w)
    assert proc.returncode == 1
    assert proc.stderr == ""  # no "Error: Broken pipe", no "Exception ignored"


# -- 5. usage errors: one line, exit 2 ---------------------------------------------------------------

USAGE_CASES = [
    (["compute"], "compute", "PATHS"),
    (["compute", "--mode", "cmyk", "."], "compute", "--mode"),
    (["compute", "-j", "0", "."], "compute", "--workers"),
    (["compute", "--no-such-flag", "."], "compute", "--no-such-flag"),
    (["compute", "--shard", "x", "."], "compute", "--shard"),
    (["compute", ".", "--bn-momentum", "0.1"], "compute", "--batch-size"),
    (["compute", "nope-dir"], "compute", "nope-dir"),
    (["merge"], "merge", "STATS_FILES"),
    (["merge", "nope.json"], "merge", "nope.json"),
    (["merge", "STATS", "-o"], "merge", "-o"),
    (["export", "nope.json"], "export", "nope.json"),
    (["export", "STATS"], "export", "--format"),
    (["export", "STATS", "--format", "caffe"], "export", "caffe"),
    (["compare"], "compare", "PATHS"),
    (["compare", ".", "--limit", "0"], "compare", "--limit"),
    (["compare", ".", "--max-memory", "12Q"], "compare", "--max-memory"),
    (["frobnicate"], None, "frobnicate"),
    (["--no-such-flag"], None, "--no-such-flag"),
]


@pytest.mark.parametrize("args,command,needle", USAGE_CASES)
def test_usage_errors_are_one_line(sample_data, stats_file, monkeypatch, args, command, needle):
    monkeypatch.chdir(sample_data)
    args = [os.fspath(stats_file) if a == "STATS" else a for a in args]
    result = cli(*args, expect=2)
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith("Error: ")
    assert needle in line
    hint = f"See 'main {command} --help'." if command else "See 'main --help'."  # CliRunner's prog name
    assert line.endswith(" " + hint), line
    assert "Usage:" not in result.stderr


def test_export_missing_format_lists_formats_on_the_same_line(stats_file):
    line = one_line(cli("export", stats_file, expect=2).stderr)
    assert "'-f' / '--format'" in line and "torchvision" in line and "\t" not in line


def test_no_arguments_still_shows_help():
    result = cli()
    assert "Commands:" in result.output


# -- 6. --help grouped, 80 columns -------------------------------------------------------------------

HELP_SECTIONS = {
    "compute": ["Inputs:", "Preprocessing:", "Running:", "Output:", "BatchNorm:"],
    "compare": ["Inputs:", "Preprocessing:", "Running:", "Output:"],
}


@pytest.mark.parametrize("command", ["compute", "compare", "merge", "export"])
def test_help_is_grouped_and_fits_80_columns(command):
    result = cli(command, "--help", terminal_width=80)
    assert result.exit_code == 0
    text = result.output
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, wide
    assert not [line for line in text.splitlines() if line != line.rstrip()], text  # no empty help entries
    headings = [line for line in text.splitlines() if re.fullmatch(r"[A-Z][A-Za-z ]*:", line)]
    for section in HELP_SECTIONS.get(command, []):
        assert section in headings, text
    # every option is listed exactly once
    for param in main.commands[command].params:
        for opt in param.opts if param.param_type_name == "option" else []:
            assert len(re.findall(rf"(?<![\w-]){re.escape(opt)}\b(?!-)", _option_column(text))) == 1, (opt, text)


def _option_column(text: str) -> str:
    """The option names of a help text (first column of the option lines)."""
    names = []
    for line in text.splitlines():
        if line.startswith("  -"):
            names.append(re.split(r"\s{2,}", line.strip())[0])
    return "\n".join(names)


# -- 7. -o onto a full disk ----------------------------------------------------------------------------------


def test_output_to_a_full_disk_is_one_line(images):
    folder, _ = images
    assert "No space left on device" in one_line_error(cli("compute", folder, "-q", "-o", "/dev/full"), 1)


# -- 8. '-' for --trace and --checkpoint ---------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--trace", "--checkpoint"])
def test_a_dash_for_trace_or_checkpoint_is_a_usage_error(small_pngs, tmp_path, monkeypatch, option):
    """-o - is stdout; --trace - silently wrote a file named '-' into the current folder (exit 0)."""
    monkeypatch.chdir(tmp_path)
    result = cli("compute", small_pngs, "-q", "-j", "1", option, "-")
    assert result.exit_code == 2 and "standard output" in result.stderr
    assert not (tmp_path / "-").exists()


# -- 9. the progress bar: its last line, small and sizeless terminals, file names that cannot forge lines ----


def _tally_of(paths, bad=()):
    from bnstats.running.count import count_files

    tally = count_files([str(p) for p in paths])
    tally.skipped += [{"path": b, "error": "OSError: broken"} for b in bad]
    return tally


def test_progress_bar_ends_with_the_final_mean_and_skip_count(sample_data, monkeypatch):
    import shutil

    from bnstats.cli.progress import Progress
    from helpers import iter_image_paths

    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(0, 0): __import__("os").terminal_size((0, 0)))
    files = iter_image_paths([sample_data])
    term = FakeTerminal(descriptor=None)  # no descriptor: the bar's fixed width
    progress = Progress(len(files), stream=term)
    progress(_tally_of(files[:3]), 3)  # the bar samples the running mean here ...
    final = _tally_of(files, bad=["x.png"])
    progress(final, len(files))  # ... and not again within 0.5 s
    progress.close()
    last = term.text.replace("\r", "\n").strip().splitlines()[-1]
    assert " ".join(f"{m:.4f}" for m in final.stats.result()["mean"]) in last
    assert "skipped 1" in last
    assert max(len(line) for line in term.text.replace("\r", "\n").splitlines()) <= 80  # 0 columns: fixed width



@pytest.mark.parametrize("size", [(80, 1), (80, 2)])
def test_the_bar_shows_on_a_terminal_of_fewer_than_three_rows(monkeypatch, size):
    """A pane of 2 rows (tmux, an IDE console) showed only "... (more hidden) ..." where the bar goes."""
    from bnstats.cli import progress

    monkeypatch.setenv("COLUMNS", str(size[0]))
    monkeypatch.setenv("LINES", str(size[1]))
    monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd=None: os.terminal_size(size))
    stream = FakeTerminal()
    bar = progress.Progress(4, stream=stream)
    bar.advance(4)
    bar.close()
    assert "4/4" in stream.text and "more hidden" not in stream.text



@pytest.mark.parametrize("size", [(0, 0), (0, 24), (100, 0)])
def test_the_bar_shows_on_a_terminal_that_reports_no_size(monkeypatch, size):
    from bnstats.cli import progress

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd=None: os.terminal_size(size))
    stream = FakeTerminal()
    bar = progress.Progress(4, stream=stream)
    bar.advance(4)
    bar.close()
    assert "4/4" in stream.text


@pytest.mark.slow
def test_the_bar_shows_on_a_real_pty_of_0x0(tmp_path, images):
    pty = pytest.importorskip("pty")
    import fcntl
    import select
    import struct
    import termios

    folder, _ = images
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.getcwd()
    proc = subprocess.Popen([sys.executable, "-m", "bnstats", "compute", folder, "-j", "1", "-o", tmp_path / "o.json"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed its end
                    break
                if not data:
                    break
                seen += data
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert b"4/4" in seen



def test_file_names_cannot_forge_message_lines():
    from bnstats.cli.progress import Progress

    import io

    log = io.StringIO()  # not a terminal: plain lines
    Progress(1, stream=log).warn("skipped evil\nbnstats: warning: all good.png: OSError")
    assert log.getvalue().count("\n") == 1 and "evil\\nbnstats" in log.getvalue()
