"""Hostile and unusual input through the batch runner.

The whole corpus of ``tests/corpus.py`` (good and bad files side by side, plus a few awkward
file names) goes through ``deepprior batch FOLDER --task denoise`` in this process, once: every
good file must come back as a PNG of the same size, mode and bit depth (batch writes PNG, which
holds 16 bits, so 16-bit photos stay 16-bit); every bad file must be a ``failed`` record in
``manifest.jsonl`` with a one-line error and no output; the run ends with exit status 1 and no
``.part`` file; a second run skips every finished job. Files that are not regular files (a
named pipe, ``/dev/zero``) must fail without being read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

from deepprior import batch  # noqa: E402
from deepprior.cli import main  # noqa: E402
from deepprior.images import load_image  # noqa: E402

FEW = ["--task", "denoise", "--iters", "2", "--workers", "1", "--cpus-per-job", "1", "-q"]

# Real-world names: a leading dash (an option to a careless shell script), spaces and accents.
ODD_NAMES = {"dash_name": "-o.png", "spaced_unicode_name": "día de playa (copia).png"}


def run_batch_cli(args) -> tuple[int, str]:
    """``deepprior batch`` in this process; (exit status, stderr)."""
    err = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stderr(err):
            rc = main(["batch", *map(str, args)])
    finally:
        torch.set_num_threads(threads)
    return rc, err.getvalue()


def last_records(out: Path) -> dict[str, dict]:
    """The latest manifest record of each input (by its path under the input folder)."""
    found = {}
    for line in (out / batch.MANIFEST).read_text().splitlines():
        rec = json.loads(line)
        found[rec["relpath"]] = rec
    return found


def leftovers(folder: Path) -> list[str]:
    """Temporary files a write could leave behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part") or p.name.startswith(".tmp"))


@pytest.fixture(scope="module")
def samples():
    good = corpus.good_samples()
    rgb = next(s for s in good if s.name == "rgb_png")
    extra = [corpus.Sample(name, filename, rgb.data, rgb.size, rgb.mode, rgb.bit_depth)
             for name, filename in ODD_NAMES.items()]
    return good + extra, corpus.bad_samples()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, samples):
    """One batch over the corpus; what it returned, said and wrote (records read right after)."""
    good, bad = samples
    root = tmp_path_factory.mktemp("hostile-batch")
    src, out = root / "in", root / "out"
    corpus.write_corpus(src, good + bad)
    assert len(list(src.iterdir())) == len(good) + len(bad)  # no two samples share a file name
    rc, err = run_batch_cli([src, "--out", out, *FEW])
    return dict(rc=rc, err=err, src=src, out=out, records=last_records(out),
                lines=(out / batch.MANIFEST).read_text().splitlines())


def test_the_run_fails_with_status_1_and_a_summary(first_run, samples):
    good, bad = samples
    err = first_run["err"]
    assert first_run["rc"] == 1, err
    assert f"batch: {len(good)} done, 0 skipped, {len(bad)} failed" in err
    assert "Traceback" not in err
    assert len(first_run["lines"]) == len(good) + len(bad)  # one record per file, no more


def test_every_good_file_comes_back_as_it_was(first_run, samples):
    good, _ = samples
    out, records = first_run["out"], first_run["records"]
    outputs = set()
    for s in good:
        rec = records[s.filename]
        assert rec["status"] == "done" and rec["error"] is None, (s.name, rec)
        path = out / rec["output"]
        assert path.suffix == ".png" and path.is_file(), s.name
        outputs.add(path)
        data = path.read_bytes()
        assert data.startswith(corpus.PNG_SIGNATURE), s.name
        assert data[24] == s.bit_depth, s.name  # the IHDR bit depth: 16-bit photos stay 16-bit
        back = load_image(path)
        assert (back.size, back.mode, back.bit_depth) == (s.size, s.mode, s.bit_depth), s.name
        assert rec["input_sha256"] == hashlib.sha256(s.data).hexdigest(), s.name
    assert len(outputs) == len(good)  # rgb.png, rgb.webp, rgb.bmp and rgb.tif do not overwrite each other


def test_every_bad_file_is_a_failed_record_with_one_line_and_no_output(first_run, samples):
    _, bad = samples
    out, records, err = first_run["out"], first_run["records"], first_run["err"]
    for s in bad:
        rec = records[s.filename]
        assert rec["status"] == "failed", (s.name, rec)
        msg = rec["error"]
        assert isinstance(msg, str) and msg and "\n" not in msg, (s.name, msg)
        assert s.error in msg, (s.name, msg)
        assert "Traceback" not in msg
        assert not (out / rec["output"]).exists(), s.name
        assert f"failed  {s.filename}: {msg}" in err  # said on stderr even with -q


def test_no_temporary_file_is_left(first_run):
    assert leftovers(first_run["out"]) == []
    assert leftovers(first_run["src"]) == []


def test_inputs_are_never_touched(first_run, samples):
    good, bad = samples
    for s in good + bad:
        assert (first_run["src"] / s.filename).read_bytes() == s.data, s.name


def test_rerun_skips_every_done_job_and_tries_the_failed_ones_again(first_run, samples):
    good, bad = samples
    out = first_run["out"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.png")}
    rc, err = run_batch_cli([first_run["src"], "--out", out, *FEW])
    assert rc == 1, err
    assert f"batch: 0 done, {len(good)} skipped, {len(bad)} failed" in err
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.png")}
    assert after == before  # nothing rewritten, nothing new
    records = last_records(out)
    assert all(records[s.filename]["status"] == "done" for s in good)
    assert all(records[s.filename]["status"] == "failed" for s in bad)
    assert leftovers(out) == []


def test_a_fixed_file_is_done_on_the_next_run(tmp_path, samples):
    """Replacing a bad file by a good one under the same name: the next run restores it."""
    good, bad = samples
    src, out = tmp_path / "in", tmp_path / "out"
    cut = next(s for s in bad if s.name == "truncated_png")
    corpus.write_corpus(src, [cut])
    rc, err = run_batch_cli([src, "--out", out, *FEW])
    assert rc == 1 and last_records(out)[cut.filename]["status"] == "failed", err
    whole = next(s for s in good if s.name == "tiny_5x7_png")
    (src / cut.filename).write_bytes(whole.data)
    rc, err = run_batch_cli([src, "--out", out, *FEW])
    assert rc == 0, err
    rec = last_records(out)[cut.filename]
    assert rec["status"] == "done"
    assert load_image(out / rec["output"]).size == whole.size


# --- files that are not files ----------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_in_the_folder_fails_without_being_read(tmp_path, samples):
    """Reading a FIFO nobody writes to blocks for ever: the batch must refuse it unread.

    After 20 s a watchdog keeps opening the pipe for writing (and closing it), so that a batch
    that does try to read it is released and fails this test instead of hanging the suite.
    """
    good, _ = samples
    src, out = tmp_path / "in", tmp_path / "out"
    photo = next(s for s in good if s.name == "tiny_2x3_png")
    corpus.write_corpus(src, [photo])
    fifo = src / "pipe.png"
    os.mkfifo(fifo)
    finished = threading.Event()

    def release():
        if finished.wait(20):
            return
        while not finished.wait(0.2):  # every reader that comes along gets an empty file
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    watchdog = threading.Thread(target=release, daemon=True)
    watchdog.start()
    try:
        rc, err = run_batch_cli([src, "--out", out, *FEW])
    finally:
        finished.set()
        watchdog.join()
    records = last_records(out)
    assert records["pipe.png"]["status"] == "failed"
    assert "not a regular file" in records["pipe.png"]["error"], records["pipe.png"]
    assert records[photo.filename]["status"] == "done"
    assert rc == 1, err


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_a_device_named_on_the_command_line_fails_without_being_read(tmp_path, samples):
    """``/dev/zero`` never ends: hashing or loading it would run for ever."""
    good, _ = samples
    photo = next(s for s in good if s.name == "tiny_1x1_png")
    corpus.write_corpus(tmp_path / "in", [photo])
    zero = tmp_path / "in" / "zero.png"
    zero.symlink_to("/dev/zero")  # named on the command line as a photo would be
    out = tmp_path / "out"

    def too_long(signum, frame):
        raise TimeoutError("the batch is reading /dev/zero")

    old = signal.signal(signal.SIGALRM, too_long)  # a batch that reads it is stopped, not left spinning
    signal.alarm(30)
    try:
        rc, err = run_batch_cli([zero, tmp_path / "in" / photo.filename, "--out", out, *FEW])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert rc == 1, err
    records = last_records(out)
    assert "not a regular file" in records["zero.png"]["error"]
    assert records[photo.filename]["status"] == "done"
    assert re.search(r"1 done, 0 skipped, 1 failed", err), err


def test_a_dangling_link_fails_with_one_line(tmp_path, samples):
    good, _ = samples
    src, out = tmp_path / "in", tmp_path / "out"
    photo = next(s for s in good if s.name == "gray_png")
    corpus.write_corpus(src, [photo])
    (src / "gone.jpg").symlink_to(tmp_path / "moved-away.jpg")
    rc, err = run_batch_cli([src, "--out", out, *FEW])
    assert rc == 1, err
    rec = last_records(out)["gone.jpg"]
    assert rec["status"] == "failed" and "\n" not in rec["error"] and "cannot read file" in rec["error"]
    assert last_records(out)[photo.filename]["status"] == "done"
