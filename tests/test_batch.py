"""Batch restoration: finding inputs, the manifest, resuming after kill -9, failures, executors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from deepprior import batch
from deepprior.cli import main
from deepprior.errors import DeepPriorError

ITERS = ["--iters", "5"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _photo(size: int, seed: int) -> np.ndarray:
    """A small smooth colour image with some noise (uint8)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.dstack([np.sin(3 * x + seed), np.cos(2 * y - seed), x * y]) * 0.4 + 0.5
    noisy = base + rng.normal(0, 0.08, base.shape)
    return (np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(array).save(path)
    return path


def _tree(root: Path, n: int = 3, size: int = 32, corrupt: bool = False) -> Path:
    """root/in with n images, some in a subfolder, optionally a corrupt one."""
    src = root / "in"
    for i in range(n):
        sub = "sub/" if i % 2 else ""
        _save(src / f"{sub}img{i}.png", _photo(size + 8 * (i % 2), i))
    if corrupt:
        whole = _save(src / "broken.png", _photo(size, 99)).read_bytes()
        (src / "broken.png").write_bytes(whole[: len(whole) // 2])  # cut short, like a failed copy
    return src


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / batch.MANIFEST).read_text().splitlines() if line.strip()]


def _last(out: Path) -> dict[str, dict]:
    return {r["output"]: r for r in _records(out)}


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


# ---------------------------------------------------------------------------- finding inputs


def test_find_inputs_walks_folders_globs_and_skips_masks_hidden_and_outputs(tmp_path):
    src = tmp_path / "photos"
    a = _save(src / "a.png", _photo(16, 0))
    b = _save(src / "deep" / "b.jpg", _photo(16, 1))
    _save(src / "a_mask.png", _photo(16, 2))  # a companion, not an input
    _save(src / ".hidden.png", _photo(16, 3))
    (src / "notes.txt").write_text("not an image")
    _save(src / "restored" / "a.png", _photo(16, 4))  # a previous run's output
    link = src / "link.png"  # a link to a photo elsewhere is mirrored where it is named
    link.symlink_to(_save(tmp_path / "elsewhere" / "c.png", _photo(16, 5)))
    files, root = batch.find_inputs([src], exclude=[src / "restored"])
    assert files == [a, b, link]
    assert root == src

    files, root = batch.find_inputs([str(src / "**" / "*.jpg")])
    assert files == [b] and root == src

    with pytest.raises(DeepPriorError, match="no such file"):
        batch.find_inputs([tmp_path / "missing"])
    with pytest.raises(DeepPriorError, match="no input images"):
        batch.find_inputs([str(src / "*.gif")])


def test_plan_mirrors_the_tree_and_pairs_masks(tmp_path):
    src = tmp_path / "in"
    _save(src / "x.png", _photo(16, 0))
    _save(src / "x_mask.png", _photo(16, 1))
    _save(src / "sub" / "y.jpg", _photo(16, 2))
    _save(src / "sub" / "y.png", _photo(16, 3))  # same name, other format: outputs must not clash
    masks = tmp_path / "masks"
    _save(masks / "y.png", _photo(16, 4))
    settings = batch.Settings("inpaint")
    jobs = {j.relpath: j for j in batch.plan([src], tmp_path / "out", settings, masks_dir=masks)}
    assert set(jobs) == {"x.png", "sub/y.jpg", "sub/y.png"}
    assert jobs["x.png"].mask == src / "x_mask.png"
    assert jobs["sub/y.jpg"].mask == masks / "y.png"
    assert {j.output_rel for j in jobs.values()} == {"x.png", "sub/y.jpg.png", "sub/y.png.png"}
    assert all(j.problem is None and "mask_sha256" in j.params for j in jobs.values())

    alone = batch.plan([src], tmp_path / "out", settings)
    missing = [j for j in alone if j.problem]
    assert sorted(j.relpath for j in missing) == ["sub/y.jpg", "sub/y.png"]
    assert "no mask found" in missing[0].problem

    with pytest.raises(DeepPriorError, match="scale"):
        batch.plan([src], tmp_path / "out", batch.Settings("upscale", scale=5))
    for out in (src, tmp_path):  # outputs would overwrite or be mixed with the inputs
        with pytest.raises(DeepPriorError, match="must not be .inside. the output folder"):
            batch.plan([src], out, batch.Settings("denoise"))


# ---------------------------------------------------------------------------- the manifest


def test_manifest_ignores_a_cut_line_and_locks_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    good = {"output": "a.png", "status": "done"}
    (out / batch.MANIFEST).write_text(json.dumps(good) + "\n" + '{"output": "b.png", "sta')
    with batch.Manifest(out) as m:
        assert set(m.records) == {"a.png"}
        m.append({"output": "c.png", "status": "failed"})
        with pytest.raises(DeepPriorError, match="another batch"):
            batch.Manifest(out).open()
    assert [r["output"] for r in _records_lenient(out)] == ["a.png", "c.png"]


def _records_lenient(out):
    rows = []
    for line in (out / batch.MANIFEST).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


# ---------------------------------------------------------------------------- local runs


def test_local_batch_bad_file_fails_alone_and_rerun_skips_done(tmp_path, capsys):
    src = _tree(tmp_path, n=3, corrupt=True)
    out = tmp_path / "out"
    args = ["batch", str(src), "--task", "denoise", "--out", str(out), *ITERS, "--workers", "1", "--cpus-per-job", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "2 done" not in err and "3 done, 0 skipped, 1 failed" in err
    recs = _last(out)
    assert recs["broken.png"]["status"] == "failed" and "corrupt" in recs["broken.png"]["error"]
    assert "\n" not in recs["broken.png"]["error"]
    outputs = _outputs(out)
    assert set(outputs) == {"img0.png", "sub/img1.png", "img2.png"}
    for rel in outputs:
        assert recs[rel]["status"] == "done" and recs[rel]["iterations"] == 5
        with PILImage.open(out / rel) as im:
            assert im.size == PILImage.open(src / rel).size
    stamps = {rel: (out / rel).stat().st_mtime_ns for rel in outputs}

    assert main(args) == 1  # the broken file is tried again and fails again
    err = capsys.readouterr().err
    assert "0 done, 3 skipped, 1 failed" in err
    assert {rel: (out / rel).stat().st_mtime_ns for rel in outputs} == stamps
    assert len(_records(out)) == 5


def test_changed_parameters_or_inputs_redo_only_the_affected_jobs(tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(2):
        _save(src / f"p{i}.png", _photo(32, i))
        mask = np.zeros((32, 32), np.uint8)
        mask[8:12, 4:28] = 255
        _save(src / f"p{i}_mask.png", mask)
    out = tmp_path / "out"
    args = ["batch", str(src), "--task", "inpaint", "--out", str(out), *ITERS, "--workers", "1", "--cpus-per-job", "1", "-q"]
    assert main(args) == 0
    assert "2 done, 0 skipped" in capsys.readouterr().err
    assert set(_outputs(out)) == {"p0.png", "p1.png"}  # the masks were not restored themselves

    mask = np.zeros((32, 32), np.uint8)
    mask[20:24, 4:28] = 255
    _save(src / "p1_mask.png", mask)  # a new mask for one image
    assert main(args) == 0
    assert "1 done, 1 skipped" in capsys.readouterr().err
    assert _last(out)["p1.png"]["attempts"] == 1 and len(_records(out)) == 3

    _save(src / "p0.png", _photo(32, 7))  # a new photo under the same name
    (out / "p1.png").unlink()  # an output deleted by hand
    assert main(args) == 0
    assert "2 done, 0 skipped" in capsys.readouterr().err

    assert main(args[:-1] + ["--mode", "hole", "-q"]) == 0  # a changed option redoes everything
    assert "2 done, 0 skipped" in capsys.readouterr().err


def test_retries_redo_unexpected_errors_but_not_bad_inputs(tmp_path, monkeypatch):
    import deepprior.restoration as restoration

    src = _tree(tmp_path, n=1, corrupt=True)
    real = restoration.restore
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory\nsecond line")
        return real(*args, **kwargs)

    monkeypatch.setattr(restoration, "restore", flaky)
    settings = batch.Settings("denoise", iterations=3)
    s = batch.run_batch([src], tmp_path / "a", settings, workers=1, cpus_per_job=1, retries=0)
    assert (s.done, s.failed, s.exit_code) == (0, 2, 1)
    assert _last(tmp_path / "a")["img0.png"]["error"] == "RuntimeError: CUDA out of memory"

    calls.clear()
    s = batch.run_batch([src], tmp_path / "b", settings, workers=1, cpus_per_job=1, retries=2)
    assert (s.done, s.failed) == (1, 1)
    recs = _last(tmp_path / "b")
    assert recs["img0.png"]["attempts"] == 2 and recs["img0.png"]["status"] == "done"
    assert recs["broken.png"]["attempts"] == 1  # the input's fault: not retried


def test_local_worker_processes(tmp_path):
    src = _tree(tmp_path, n=2, corrupt=True)
    s = batch.run_batch([src], tmp_path / "out", batch.Settings("denoise", iterations=3), workers=2, cpus_per_job=1)
    if batch.available_cores() >= 2:
        assert s.workers == 2
    assert (s.done, s.failed) == (2, 1)
    assert {r["threads"] for r in _records(tmp_path / "out") if r["status"] == "done"} == {1}


def test_killed_run_resumes_with_identical_outputs(tmp_path, capsys):
    src = _tree(tmp_path, n=5, size=40)
    opts = ["--task", "denoise", *ITERS, "--workers", "1", "--cpus-per-job", "1", "-q"]
    ref = tmp_path / "ref"
    assert main(["batch", str(src), "--out", str(ref), *opts]) == 0
    expected = _outputs(ref)
    assert len(expected) == 5

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "deepprior.cli", "batch", str(src), "--out", str(out), *opts]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / batch.MANIFEST
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and b'"done"' in manifest.read_bytes():
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    finished = {r["output"] for r in _records(out) if r["status"] == "done"}
    assert 1 <= len(finished) < 5
    for rel, data in _outputs(out).items():  # whatever is there is whole (maybe one not yet recorded)
        assert data == expected[rel]
    stamps = {rel: (out / rel).stat().st_mtime_ns for rel in finished}

    assert main(["batch", str(src), "--out", str(out), *opts]) == 0
    err = capsys.readouterr().err
    assert f"{5 - len(finished)} done, {len(finished)} skipped, 0 failed" in err
    assert {rel: (out / rel).stat().st_mtime_ns for rel in finished} == stamps  # not redone
    assert _outputs(out) == expected  # byte-identical to an uninterrupted run
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_usage_errors_are_one_line(tmp_path, capsys):
    src = _tree(tmp_path, n=1)
    for extra, message in (
        (["--task", "sharpen"], "unknown task"),
        (["--task", "deblur"], "needs a kernel"),
        (["--task", "denoise", "--cpus-per-job", "0"], "--cpus-per-job"),
        (["--task", "denoise", "--executor", "slurm"], "unknown executor"),
        (["--task", "denoise", "--ray-address", "auto"], "goes with --executor ray"),
    ):
        assert main(["batch", str(src), "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(DeepPriorError, match=r"pip install 'deepprior\[ray\]'"):
        batch.RayCluster(None, None, 1)


# ---------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def test_ray_batch_matches_local_and_resumes(tmp_path, ray_cluster, capsys):
    src = _tree(tmp_path, n=3, corrupt=True)
    opts = ["--task", "denoise", *ITERS, "--cpus-per-job", "1", "-q"]
    out = tmp_path / "ray"
    assert main(["batch", str(src), "--out", str(out), "--executor", "ray", *opts]) == 1
    err = capsys.readouterr().err
    assert "3 done, 0 skipped, 1 failed" in err and "(ray, 2 at a time, 1 CPU each)" in err
    recs = _last(out)
    assert recs["broken.png"]["status"] == "failed" and "corrupt" in recs["broken.png"]["error"]
    assert ray_cluster.is_initialized()  # a cluster it did not start is left running

    local = tmp_path / "local"
    assert main(["batch", str(src), "--out", str(local), "--workers", "1", *opts]) == 1
    capsys.readouterr()
    assert _outputs(out) == _outputs(local)  # same seed, same threads: the same bytes

    # Resume is the same whichever executor ran first.
    (out / "img2.png").unlink()
    assert main(["batch", str(src), "--out", str(out), "--executor", "ray", *opts]) == 1
    assert "1 done, 2 skipped, 1 failed" in capsys.readouterr().err
    assert _outputs(out) == _outputs(local)


def test_the_tiles_of_one_large_image_fitted_on_ray_match_a_local_run(tmp_path, ray_cluster, rgb32):
    from deepprior import restore
    from deepprior.images import Image
    from deepprior.tasks import Denoise

    image = Image(np.ascontiguousarray(np.tile(rgb32, (1, 2, 1))))  # 32x64: several tiles at 600 pixels
    kw = dict(iterations=3, seed=4, threads=1, max_fit_pixels=600, large="tiles")
    local = restore(image, Denoise(), **kw)
    seen = []
    spread = restore(image, Denoise(), executor="ray", callback=lambda p: seen.append((p.tile, p.tiles)), **kw)
    np.testing.assert_array_equal(spread.image.pixels, local.image.pixels)
    tiles = local.report()["tiling"]["tiles"]
    assert tiles > 1 and spread.report()["tiling"]["executor"] == "ray"
    assert seen == [(k, tiles) for k in range(1, tiles + 1)]  # told of each tile as it finished
    assert ray_cluster.is_initialized()  # a cluster it did not start is left running

    # Stopped after the first tile: the rest come from the input, as in a local run.
    stopped = restore(image, Denoise(), executor="ray", callback=lambda p: True, **kw)
    assert stopped.outcome.stop_reason == "callback" and stopped.report()["tiling"]["tiles_done"] == 1
    assert stopped.image.pixels.shape == image.pixels.shape


def test_the_cli_fits_tiles_on_ray(tmp_path, ray_cluster, rgb32, capsys):
    photo = tmp_path / "photo.png"
    PILImage.fromarray((rgb32 * 255).round().astype(np.uint8)).save(photo)
    opts = ["--iters", "2", "-q", "--threads", "1", "--max-fit-pixels", "400", "--large", "tiles"]
    assert main(["denoise", str(photo), "-o", str(tmp_path / "ray.png"), "--executor", "ray", *opts]) == 0
    assert main(["denoise", str(photo), "-o", str(tmp_path / "local.png"), *opts]) == 0
    assert (tmp_path / "ray.png").read_bytes() == (tmp_path / "local.png").read_bytes()
    code = main(["denoise", str(photo), "-o", str(tmp_path / "x.png"), "--executor", "slurm", "-q"])
    err = capsys.readouterr().err
    assert code != 0 and "unknown executor" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
