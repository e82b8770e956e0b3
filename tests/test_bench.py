"""The evaluation harness: metrics conventions, suites' degradations, runner with resume, report, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from deepprior import metrics
from deepprior.bench import baselines, report, runner, suites
from deepprior.cli import main
from deepprior.errors import DeepPriorError
from deepprior.images import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark images (../shared/data beside the repository), or skip."""
    path = REPO.parent / "shared" / "data"
    if not (path / "MANIFEST.tsv").is_file():
        pytest.skip(f"benchmark data not found at {path}")
    return path


def _photo(h, w, c, seed):
    """A smooth random test picture with some edges, as uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    planes = []
    for _ in range(c):
        a, b, f = rng.uniform(0.5, 3, 3)
        planes.append(0.5 + 0.3 * np.sin(a * 6 * xx + f) * np.cos(b * 6 * yy) + 0.2 * (xx + yy > rng.uniform(0.5, 1.5)))
    return (np.clip(np.stack(planes, 2), 0, 1) * 255).astype(np.uint8)


def make_data(root: Path, set_name: str, names: list[str], size=(40, 44), channels=3) -> Path:
    """A data folder laid out like shared/data: <set>/<name>.png and a MANIFEST.tsv with sha256."""
    (root / set_name).mkdir(parents=True, exist_ok=True)
    lines = ["set\tfile\twidth\theight\tmode\tbytes\tsha256\tsource_repo\tsource_path"]
    for i, n in enumerate(names):
        arr = _photo(size[0], size[1], channels, i)
        path = root / set_name / f"{n}.png"
        PILImage.fromarray(arr[:, :, 0] if channels == 1 else arr).save(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{set_name}\t{n}.png\t{size[1]}\t{size[0]}\tRGB\t{path.stat().st_size}\t{digest}\ttest\ttest")
    (root / "MANIFEST.tsv").write_text("\n".join(lines) + "\n")
    return root


# --------------------------------------------------------------------------- metrics


def test_psnr_known_values():
    ref = np.full((16, 16, 3), 0.5)
    assert metrics.psnr(ref + 0.1, ref) == pytest.approx(20.0)  # MSE 0.01
    assert metrics.psnr(ref + 0.01, ref) == pytest.approx(40.0)
    assert metrics.psnr(ref, ref) == float("inf")


def test_ssim_identical_is_one_and_drops_with_noise():
    rng = np.random.default_rng(0)
    ref = _photo(48, 48, 3, 0) / 255.0
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    s1 = metrics.ssim(np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1), ref)
    s2 = metrics.ssim(np.clip(ref + rng.normal(0, 0.2, ref.shape), 0, 1), ref)
    assert 1.0 > s1 > s2 > 0


def test_y_channel_is_bt601_on_16_235():
    assert metrics.rgb_to_y(np.zeros((2, 2, 3)))[0, 0] == pytest.approx(16.0)
    assert metrics.rgb_to_y(np.ones((2, 2, 3)))[0, 0] == pytest.approx(235.0)
    red = np.zeros((1, 1, 3))
    red[..., 0] = 1
    assert metrics.rgb_to_y(red)[0, 0] == pytest.approx(16 + 65.481)
    assert metrics.rgb_to_y(np.ones((2, 2, 1)))[0, 0] == pytest.approx(235.0)  # grayscale: full luma range


def test_y_psnr_known_value_and_border_crop():
    ref = np.full((20, 20, 3), 0.5)
    est = ref + 2.55 / 219.0  # Y differs by 2.55 everywhere (equal RGB shift, weights sum to 219)
    assert metrics.y_psnr(est, ref) == pytest.approx(40.0)  # 255^2 / 2.55^2 = 1e4
    framed = ref.copy()
    framed[:4] = framed[-4:] = 0.0
    framed[:, :4] = framed[:, -4:] = 1.0
    assert metrics.y_psnr(framed, ref, border=4) == float("inf")  # errors only inside the cropped border
    assert metrics.y_psnr(framed, ref, border=3) < 30


def test_sr_suite_scores_y_with_scale_border():
    suite = suites.get_suite("sr-x4")
    gt = _photo(32, 32, 3, 1) / 255.0
    est = gt.copy()
    est[:, :2] = 0.0  # damage only the 4-pixel border
    scores = suite.score(est, gt)
    assert set(scores) == {"psnr", "ssim", "psnr_y", "ssim_y"}
    assert scores["psnr_y"] == float("inf") and np.isfinite(scores["psnr"])
    assert set(suites.get_suite("denoise-25").score(est, gt)) == {"psnr", "ssim"}


# --------------------------------------------------------------------------- suites


def _image(h=40, w=44, c=3, seed=0):
    return Image(_photo(h, w, c, seed).astype(np.float32) / 255.0)


def test_sr_degradation_crops_to_multiple_and_downscales():
    clean = _image(43, 50)
    case = suites.get_suite("sr-x4").degrade(clean, "x", seed=0)
    assert case.clean.pixels.shape == (40, 48, 3)
    assert case.degraded.pixels.shape == (10, 12, 3)
    assert np.allclose(case.degraded.pixels * 255, np.rint(case.degraded.pixels * 255), atol=1e-4)  # 8-bit input
    assert case.task.scale == 4 and case.scale == 4
    assert suites.get_suite("sr-x8").degrade(clean, "x", 0).degraded.pixels.shape == (5, 6, 3)


def test_the_sr_check_set_is_centre_crops_of_images_in_no_other_sr_set():
    check = suites.get_suite("sr-x4", "Kodak+Heide11")
    stems = {Path(f).stem.lower() for f in check.files}
    assert len(stems) >= 10
    # Set5 and Set14 hold baboon, barbara, lenna, man and pepper, which the colour and grey sets repeat.
    assert not stems & {"baby", "bird", "butterfly", "head", "woman", "baboon", "barbara", "bridge", "coastguard", "comic",
                        "face", "flowers", "foreman", "lenna", "lena512", "man", "monarch", "pepper", "peppers256",
                        "image_baboon512rgb", "image_lena512rgb", "image_peppers512rgb", "ppt3", "zebra"}
    case = check.degrade(_image(300, 310), "x", seed=0)
    assert case.clean.pixels.shape == (suites.SR_CROP, suites.SR_CROP, 3)
    assert case.degraded.pixels.shape == (suites.SR_CROP // 4, suites.SR_CROP // 4, 3)
    assert suites.get_suite("sr-x4").files == () and "centre crops" in check.description()
    with pytest.raises(DeepPriorError, match="Kodak\\+Heide11"):
        suites.get_suite("sr-x2", "Set6")


def test_noise_is_seeded_per_image_and_has_the_suite_sigma():
    suite = suites.get_suite("denoise-25")
    clean = Image(np.full((64, 64, 3), 0.5, np.float32))
    a, b = suite.degrade(clean, "one", 0), suite.degrade(clean, "one", 0)
    assert np.array_equal(a.degraded.pixels, b.degraded.pixels)
    assert not np.array_equal(a.degraded.pixels, suite.degrade(clean, "two", 0).degraded.pixels)
    assert not np.array_equal(a.degraded.pixels, suite.degrade(clean, "one", 1).degraded.pixels)
    assert np.std(a.degraded.pixels - 0.5) * 255 == pytest.approx(25, rel=0.05)
    assert a.sigma == 25 and a.task.sigma == 25
    assert suites.image_seed(0, "one") == a.seed


def test_inpainting_suites_drop_pixels_and_keep_the_known_ones():
    clean = _image(64, 64, 1)
    case = suites.get_suite("inpaint-50").degrade(clean, "x", 0)
    assert case.mask.shape == (64, 64) and 0.4 < case.mask.mean() < 0.6
    assert np.all(case.degraded.pixels[case.mask] == 0)
    assert case.task.keep_known is True and case.task.name == "reconstruct"
    # The check set is colour: its images are reconstructed in luminance, as Heide11's are grey.
    check = suites.get_suite("inpaint-50", "Set5").degrade(_image(64, 64, 3), "x", 0)
    assert check.clean.channels == 1 and check.degraded.channels == 1
    np.testing.assert_array_equal(check.mask, case.mask)
    text = suites.get_suite("inpaint-text").degrade(_image(96, 96), "x", 0)
    assert text.mask.any() and text.mask.mean() < 0.5
    assert np.all(text.degraded.pixels[text.mask] == 1.0)
    assert text.task.keep_known is True and text.task.mode == "text"


def test_fill_suites_crop_mask_and_score_inside_the_mask():
    big = _image(300, 280)
    for name, mode in (("inpaint-text", "text"), ("inpaint-hole", "hole")):
        suite = suites.get_suite(name)
        case = suite.degrade(big, "x", 0)
        assert case.clean.pixels.shape == (256, 256, 3) and case.mask.shape == (256, 256)
        assert case.task.mode == mode and case.task.keep_known is True
        assert np.array_equal(case.clean.pixels, big.pixels[22:278, 12:268])
        assert suite.metric == "psnr_mask" and suite.metrics[:2] == ("psnr_mask", "ssim_mask")
        assert 0.02 < case.mask.mean() < 0.3
        # A result exact outside the mask and off by 0.1 inside it: 20 dB inside, more over the image.
        est = case.clean.pixels.copy()
        est[case.mask] += 0.1
        scores = suite.score(est, case.clean.pixels, case.mask)
        assert scores["psnr_mask"] == pytest.approx(20.0)
        assert scores["psnr"] > scores["psnr_mask"] + 5
        assert scores["ssim_mask"] < scores["ssim"] <= 1
    assert suites.get_suite("inpaint-hole").degrade(big, "x", 0).mask.mean() == pytest.approx(0.12, abs=0.02)
    assert len(suites.suite_files(suites.get_suite("inpaint-text"), {})) >= 10


def test_mean_colour_error_sees_a_wrong_coloured_blob_that_psnr_ranks_with_a_noisy_fill():
    truth = np.zeros((20, 20, 3))
    truth[..., 0] = 0.6
    fill = np.zeros((20, 20), bool)
    fill[5:15, 5:15] = True
    noisy, blob = truth.copy(), truth.copy()
    noisy[fill] += np.random.default_rng(0).choice([-0.1, 0.1], size=(100, 3))
    blob[fill] += (0.1, -0.1, 0.1)  # the same PSNR, but the colour of the whole hole is off
    assert metrics.masked_psnr(noisy, truth, fill) == pytest.approx(metrics.masked_psnr(blob, truth, fill))
    assert metrics.mask_colour_error(blob, truth, fill) == pytest.approx(25.5)
    assert metrics.mask_colour_error(noisy, truth, fill) < 5
    assert "colour_error_mask" in suites.get_suite("inpaint-hole").metrics


def test_fill_sets_check_set_is_disjoint_and_paper_examples_use_their_own_masks(tmp_path):
    tuning = {Path(f).stem.lower() for f in suites.get_suite("inpaint-text").files}
    seen = set(tuning)
    for name in ("Set5+Kodak", "Heide11+paper"):
        check = suites.get_suite("inpaint-text", name)
        stems = {Path(f).stem.lower() for f in check.files}
        assert len(check.files) >= 10 and not seen & stems
        assert check.files == suites.get_suite("inpaint-hole", name).files
        seen |= stems
    with pytest.raises(DeepPriorError, match="unknown set"):
        suites.get_suite("inpaint-hole", "Set5")
    # The paper's examples: whole images, masks read from NAME_mask.png (white = known).
    (tmp_path / "dip_paper" / "inpainting").mkdir(parents=True)
    data = make_data(tmp_path, "dip_paper", ["inpainting/vase", "inpainting/vase_mask"], size=(24, 20))
    known = np.ones((24, 20), np.uint8) * 255
    known[8:16, 6:12] = 0
    PILImage.fromarray(known).save(data / "dip_paper" / "inpainting" / "vase_mask.png")
    manifest = suites.read_manifest(data)
    manifest["dip_paper/inpainting/vase_mask.png"]["sha256"] = hashlib.sha256(
        (data / "dip_paper" / "inpainting" / "vase_mask.png").read_bytes()).hexdigest()
    paper = suites.get_suite("inpaint-hole", "dip_paper")
    case = suites.load_case(paper, data, "dip_paper/inpainting/vase.png", manifest, 0)
    assert case.name == "vase" and case.clean.pixels.shape == (24, 20, 3)
    assert np.array_equal(case.mask, known == 0) and case.task.mode == "hole"
    assert np.all(case.degraded.pixels[case.mask] == 0)


def test_the_corner_set_crops_each_image_at_its_corner_in_luminance_where_asked():
    corners = suites.get_suite("inpaint-hole", "corners")
    assert len(corners.files) >= 10 and {Path(f).stem for f in corners.files} == set(suites.FILL_CORNERS)
    with pytest.raises(DeepPriorError, match="unknown set 'corners' for inpaint-text"):
        suites.get_suite("inpaint-text", "corners")
    pixels = np.random.default_rng(0).random((300, 400, 3)).astype(np.float32)
    photo = Image(pixels)
    grey = corners.degrade(photo, "kodim01", 0)  # top left, in luminance
    assert grey.clean.pixels.shape == (256, 256, 1)
    luma = pixels[:256, :256] @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.allclose(grey.clean.pixels[:, :, 0], np.round(luma * 255) / 255, atol=1e-6)
    colour = corners.degrade(photo, "kodim02", 0)  # bottom right, in colour
    assert np.array_equal(colour.clean.pixels, pixels[-256:, -256:])
    assert colour.mask.shape == (256, 256) and 0.05 < colour.mask.mean() < 0.2 and colour.task.mode == "hole"


def test_report_grid_and_colour_sentence(tmp_path):
    data = make_data(tmp_path / "data", "Set14", ["a", "b"], size=(40, 44))
    suite = replace(suites.get_suite("inpaint-hole"), files=("Set14/a.png", "Set14/b.png"))
    out = tmp_path / "out"
    res = runner.run_bench(suite, data, out, methods=["telea", "ns"], threads=1)
    assert all(r["colour_error_mask"] >= 0 for r in res["rows"])
    path = report.write_report(out, res, suite)
    assert (out / "figures" / "grid.png").is_file() and "figures/grid.png" in path.read_text()
    assert "Mean colour error inside the mask" in path.read_text()
    # DIP rows made up (a fit is not what this test is about): a blob of the wrong colour on "a".
    for r in [r for r in res["rows"] if r["method"] == "ns"]:
        res["rows"].append(dict(r, method="dip", psnr_mask=r["psnr_mask"] + 1,
                                colour_error_mask=r["colour_error_mask"] + (10 if r["image"] == "a" else -0.5)))
    sentence = report.colour_against_best(res["rows"])
    assert "DIP's is no larger on 1 of 2 images" in sentence
    best = max(("telea", "ns"), key=lambda m: sum(r["psnr_mask"] for r in res["rows"] if r["method"] == m))
    label = {"telea": "Telea", "ns": "Navier-Stokes"}[best]
    dip = {r["image"]: r["colour_error_mask"] for r in res["rows"] if r["method"] == "dip"}
    top = {r["image"]: r["colour_error_mask"] for r in res["rows"] if r["method"] == best}
    assert f"Against the best other method on the mean ({label}, " in sentence
    assert f"no larger on {sum(dip[i] <= top[i] for i in dip)} of 2 images." in sentence
    # DIP's own start is not a rival: a start column equal to DIP leaves the count as it was.
    res["rows"] += [dict(r, method="start") for r in res["rows"] if r["method"] == "dip"]
    assert report.colour_against_best(res["rows"]) == sentence


def test_unknown_suite_set_and_method_are_one_line_errors():
    with pytest.raises(DeepPriorError, match="unknown suite"):
        suites.get_suite("sr-x5")
    with pytest.raises(DeepPriorError, match="Set5, Set14, Kodak\\+Heide11"):
        suites.get_suite("sr-x4", "Urban100")
    with pytest.raises(DeepPriorError, match="Heide11_gray, Set5"):
        suites.get_suite("inpaint-50", "Set14")
    with pytest.raises(DeepPriorError, match="CBM3D_color9, Set5, Set14"):
        suites.get_suite("denoise-25", "Urban100")
    assert suites.get_suite("denoise-25", "Set5").set_name == "Set5"
    suite = suites.get_suite("denoise-25")
    with pytest.raises(DeepPriorError, match="does not apply"):
        baselines.resolve_methods(suite, ["bicubic"])
    with pytest.raises(DeepPriorError, match="unknown method"):
        baselines.resolve_methods(suite, ["magic"])
    assert baselines.resolve_methods(suite, None) == ["dip", "bm3d", "nlm", "tv"]
    assert "realesrgan" in baselines.methods_for(suites.get_suite("sr-x4"))
    assert "realesrgan" not in baselines.methods_for(suites.get_suite("sr-x2"))
    # Every fill the text or hole start may average is a column of its own.
    from deepprior.tasks import START_FILLS

    for kind in ("text", "hole"):
        methods = baselines.methods_for(suites.get_suite(f"inpaint-{kind}"))
        assert {m for c in START_FILLS[kind] for m in c} <= set(methods)


def test_manifest_sha256_is_checked(tmp_path):
    data = make_data(tmp_path, "Set5", ["a", "b"])
    manifest = suites.read_manifest(data)
    assert suites.load_verified(data, "Set5/a.png", manifest).pixels.shape == (40, 44, 3)
    PILImage.fromarray(_photo(40, 44, 3, 9)).save(data / "Set5" / "a.png")
    with pytest.raises(DeepPriorError, match="sha256"):
        suites.load_verified(data, "Set5/a.png", manifest)


def test_data_dir_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEEPPRIOR_DATA", raising=False)
    with pytest.raises(DeepPriorError, match="data folder not found"):
        suites.find_data_dir()
    make_data(tmp_path / "elsewhere", "Set5", ["a"])
    monkeypatch.setenv("DEEPPRIOR_DATA", str(tmp_path / "elsewhere"))
    assert suites.find_data_dir() == (tmp_path / "elsewhere").resolve()
    make_data(tmp_path / "shared" / "data", "Set5", ["a"])
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert suites.find_data_dir() == (tmp_path / "shared" / "data").resolve()  # ../shared/data comes first
    with pytest.raises(DeepPriorError, match="not found"):
        suites.find_data_dir(tmp_path / "nope")


# --------------------------------------------------------------------------- baselines


def test_baselines_restore_better_than_the_degraded_input():
    clean = _image(48, 48)
    sr = suites.get_suite("sr-x2").degrade(clean, "x", 0)
    for f in (baselines.bicubic, baselines.lanczos, baselines.regularised):
        out = f(sr)
        assert out.shape == sr.clean.pixels.shape and metrics.psnr(out, sr.clean.pixels) > 25
    dn = suites.get_suite("denoise-25").degrade(clean, "x", 0)
    noisy = metrics.psnr(dn.degraded.pixels, clean.pixels)
    for f in (baselines.nlm, baselines.tv):
        assert metrics.psnr(f(dn), clean.pixels) > noisy + 3
    ip = suites.get_suite("inpaint-50").degrade(_image(48, 48, 1), "x", 0)
    holes = metrics.psnr(ip.degraded.pixels, ip.clean.pixels)
    for f in (baselines.telea, baselines.navier_stokes, baselines.biharmonic, baselines.sparse_dct):
        out = f(ip)
        assert out.shape == (48, 48, 1) and metrics.psnr(out, ip.clean.pixels) > holes + 10


def test_tv_weight_interpolates_the_tuned_table():
    assert baselines.tv_weight(25) == baselines.TV_WEIGHTS[25]
    assert baselines.TV_WEIGHTS[15] < baselines.tv_weight(20) < baselines.TV_WEIGHTS[25]


# --------------------------------------------------------------------------- runner, resume, report


def _count_calls(monkeypatch, name):
    calls = []
    method = baselines.METHODS[name]

    def counted(case, **kw):
        calls.append(case.name)
        return method.run(case, **kw)

    monkeypatch.setitem(baselines.METHODS, name, replace(method, run=counted))
    return calls


def test_run_writes_results_and_resume_skips_finished_pairs(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data", "Set5", ["a", "b", "c"])
    out = tmp_path / "out"
    suite = suites.get_suite("sr-x4")
    calls = _count_calls(monkeypatch, "bicubic")
    res = runner.run_bench(suite, data, out, methods=["bicubic", "lanczos"], limit=2)
    assert [(r["image"], r["method"]) for r in res["rows"]] == [
        ("a", "bicubic"), ("a", "lanczos"), ("b", "bicubic"), ("b", "lanczos")]
    assert calls == ["a", "b"]
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["rows"]) == 4 and saved["config"]["suite"] == "sr-x4"
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and float(rows[0]["psnr_y"]) > 20 and rows[0]["cpu"]
    assert (out / "images" / "a" / "bicubic.png").is_file() and (out / "images" / "a" / "degraded.png").is_file()

    with pytest.raises(DeepPriorError, match="--resume"):
        runner.run_bench(suite, data, out, methods=["bicubic"])
    res2 = runner.run_bench(suite, data, out, methods=["bicubic", "lanczos"], limit=2, resume=True)
    assert calls == ["a", "b"]  # nothing recomputed
    assert res2["rows"] == saved["rows"]
    runner.run_bench(suite, data, out, methods=["bicubic"], resume=True)  # the third image only
    assert calls == ["a", "b", "c"]
    with pytest.raises(DeepPriorError, match="seed"):
        runner.run_bench(suite, data, out, methods=["bicubic"], resume=True, seed=1)


def test_interrupted_run_keeps_finished_pairs(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data", "Set5", ["a", "b"])
    out = tmp_path / "out"
    method = baselines.METHODS["lanczos"]

    def stop(case, **kw):
        if case.name == "b":
            raise KeyboardInterrupt
        return method.run(case, **kw)

    monkeypatch.setitem(baselines.METHODS, "lanczos", replace(method, run=stop))
    with pytest.raises(KeyboardInterrupt):
        runner.run_bench(suites.get_suite("sr-x2"), data, out, methods=["bicubic", "lanczos"])
    done = [(r["image"], r["method"]) for r in json.loads((out / "results.json").read_text())["rows"]]
    assert done == [("a", "bicubic"), ("a", "lanczos"), ("b", "bicubic")]
    monkeypatch.setitem(baselines.METHODS, "lanczos", method)
    res = runner.run_bench(suites.get_suite("sr-x2"), data, out, methods=["bicubic", "lanczos"], resume=True)
    assert len(res["rows"]) == 4


def test_dip_plumbing_and_report_with_figures(tmp_path):
    data = make_data(tmp_path / "data", "CBM3D_color9", ["p", "q"], size=(32, 32))
    out = tmp_path / "out"
    suite = suites.get_suite("denoise-25")
    res = runner.run_bench(suite, data, out, methods=["dip", "tv"], iters=3, names=["q"])
    dip = next(r for r in res["rows"] if r["method"] == "dip")
    assert dip["iterations"] == 3 and dip["preset"] == "fast" and dip["iters"] == 3
    assert dip["history"] and all("psnr" in h for h in dip["history"])
    assert dip["stop_curve"] == []  # kept every 10th iteration: 3 iterations leave none
    path = report.write_report(out, res, suite, n_images_total=2)
    text = path.read_text()
    assert "| **mean** |" in text and "DIP" in text and "TV" in text
    assert "paper mean" in text and "fewer than the suite's 2 images" in text
    assert (out / "figures" / "q_curve.png").is_file() and (out / "figures" / "q_montage.png").is_file()
    assert "figures/q_curve.png" in text
    with pytest.raises(DeepPriorError, match="--preset/--iters"):
        runner.run_bench(suite, data, out, methods=["dip"], iters=5, resume=True)


def test_report_lists_per_image_paper_numbers_and_gaps(tmp_path):
    data = make_data(tmp_path / "data", "Heide11_gray", ["barbara", "boat"], size=(32, 32), channels=1)
    suite = suites.get_suite("inpaint-50")
    res = runner.run_bench(suite, data, tmp_path / "out", methods=["ns"])
    table = report.metric_table(res["rows"], "psnr", suite.paper)
    assert "paper DIP" in table and "32.22" in table and "33.06" in table
    assert "paper's numbers score its network output" in report.write_report(tmp_path / "out", res, suite, figures=False).read_text()


def test_skipped_method_is_noted_not_fatal(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data", "Set5", ["a"], size=(32, 32))
    method = baselines.METHODS["realesrgan"]
    monkeypatch.setitem(baselines.METHODS, "realesrgan",
                        replace(method, missing=lambda **_: "weights not installed"))
    res = runner.run_bench(suites.get_suite("sr-x4"), data, tmp_path / "out", methods=["bicubic", "realesrgan"])
    assert [r["method"] for r in res["rows"]] == ["bicubic"]
    assert res["skipped"] == {"realesrgan": "weights not installed"}
    text = report.write_report(tmp_path / "out", res, suites.get_suite("sr-x4"), figures=False).read_text()
    assert "realesrgan was skipped: weights not installed" in text


# --------------------------------------------------------------------------- command line


def test_cli_bench_and_its_errors(tmp_path, capsys):
    data = make_data(tmp_path / "data", "Set5", ["a", "b"], size=(32, 32))
    out = tmp_path / "out"
    assert main(["bench", "sr-x2", "--data", str(data), "--methods", "bicubic", "--out", str(out), "-q"]) == 0
    assert (out / "report.md").is_file()
    assert main(["bench", "sr-x2", "--data", str(data), "--methods", "bicubic,lanczos", "--out", str(out),
                 "--resume", "-q", "--images", "b"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["image"], r["method"]) for r in rows] == [("a", "bicubic"), ("b", "bicubic"), ("b", "lanczos")]
    capsys.readouterr()
    for args, msg in (
        (["bench", "nope", "--data", str(data)], "unknown suite"),
        (["bench", "sr-x2", "--data", str(tmp_path / "missing")], "data folder not found"),
        (["bench", "sr-x2", "--data", str(data), "--images", "zzz", "--out", str(tmp_path / "o2")], "no image zzz"),
        (["bench", "sr-x2", "--data", str(data), "--limit", "0", "--out", str(tmp_path / "o3")], "--limit"),
        (["bench", "sr-x2", "--data", str(data), "--methods", "bicubic", "--out", str(out)], "--resume"),
    ):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("deepprior: error:") and msg in err and "\n" not in err


# --------------------------------------------------------------------------- against the real images


def test_bicubic_x4_on_set5_follows_the_papers_convention(shared_data, tmp_path):
    """Pillow-Lanczos LR, Y-channel PSNR with a 4-px border: bicubic lands near the paper's 28.43 dB."""
    res = runner.run_bench(suites.get_suite("sr-x4"), shared_data, tmp_path / "out", methods=["bicubic"])
    mean = np.mean([r["psnr_y"] for r in res["rows"]])
    assert len(res["rows"]) == 5
    assert abs(mean - suites.PAPER[("sr-x4", "Set5")]["mean"]["bicubic"]) < 0.3


def test_thinned_stop_curve_keeps_every_tenth_iteration_to_six_digits():
    from types import SimpleNamespace

    outcome = SimpleNamespace(stop_curve=[(i, 1 / i) for i in range(100, 131)])
    assert runner.thinned_stop_curve(outcome) == [[100, 0.01], [110, 0.00909091], [120, 0.00833333], [130, 0.00769231]]


def test_bench_report_writes_the_marked_block_of_a_run(tmp_path, capsys, monkeypatch):
    data = make_data(tmp_path / "data", "Set5", ["a", "b"], size=(32, 32))
    out = tmp_path / "out"
    runner.run_bench(suites.get_suite("sr-x2"), data, out, methods=["bicubic", "lanczos"], threads=1)
    # DIP rows are made up here (a fit is not what this test is about): DIP wins on "a" only.
    res = json.loads((out / "results.json").read_text())
    for r in [r for r in res["rows"] if r["method"] == "lanczos"]:
        res["rows"].append(dict(r, method="dip", preset="fast", iters=None, seconds=12.0,
                                psnr_y=r["psnr_y"] + (1.0 if r["image"] == "a" else -1.0)))
    runner.write_results(out, res)
    assert main(["bench", "report", str(out)]) == 0
    block = capsys.readouterr().out
    assert block.startswith("<!-- bench: sr-x2/Set5 -->") and block.rstrip().endswith("<!-- /bench -->")
    assert "DIP beats every other method on 1 of 2 images" in block
    assert "`deepprior bench sr-x2 --set Set5 --methods dip,bicubic,lanczos --threads 1`" in block
    assert "| seconds per image (mean) | 12.0 |" in block

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n<!-- bench: sr-x2/Set5 -->\nold table\n<!-- /bench -->\n\nwhat limits it\n")
    assert main(["bench", "report", str(out), "--into", str(doc)]) == 0
    text = doc.read_text()
    assert "old table" not in text and "DIP beats every other method" in text and text.endswith("what limits it\n")
    assert text.count("<!-- /bench -->") == 1
    doc.write_text("# Benchmarks\n")
    assert main(["bench", "report", str(out), "--into", str(doc)]) == 2
    assert "has no block <!-- bench: sr-x2/Set5 -->" in capsys.readouterr().err
    assert doc.read_text() == "# Benchmarks\n"


def test_the_command_under_a_run_on_some_images_names_them(tmp_path):
    """A run on part of its set (--images) reproduces with the same images, in the set's order;
    once resumed over the whole set, the command asks for no images."""
    data = make_data(tmp_path / "data", "Set5", ["a", "b", "c"], size=(32, 32))
    out = tmp_path / "out"
    suite = suites.get_suite("sr-x2")
    res = runner.run_bench(suite, data, out, methods=["bicubic"], names=["c", "a"], threads=1)
    assert report.reproduce_command(res) == "deepprior bench sr-x2 --set Set5 --images a,c --methods bicubic --threads 1"
    res = runner.run_bench(suite, data, out, methods=["bicubic"], resume=True, threads=1)
    assert report.reproduce_command(res) == "deepprior bench sr-x2 --set Set5 --methods bicubic --threads 1"


def test_the_table_of_a_resumed_run_lists_images_in_the_set_order(tmp_path):
    """Images added by a resumed run sit in the table where their set puts them, not at its end."""
    data = make_data(tmp_path / "data", "Set5", ["a", "b", "c"], size=(32, 32))
    out = tmp_path / "out"
    suite = suites.get_suite("sr-x2")
    runner.run_bench(suite, data, out, methods=["bicubic"], names=["c"], threads=1)
    res = runner.run_bench(suite, data, out, methods=["bicubic", "lanczos"], resume=True, threads=1)
    assert [r["image"] for r in res["rows"]][:2] == ["c", "a"]  # as they ran
    assert [(r["image"], r["method"]) for r in report.in_set_order(res)] == [
        ("a", "bicubic"), ("a", "lanczos"), ("b", "bicubic"), ("b", "lanczos"), ("c", "bicubic"), ("c", "lanczos")]
    lines = [ln for ln in report.suite_section(res).splitlines() if ln.startswith("| ") and ln[2] in "abc"]
    assert [ln.split(" | ")[0] for ln in lines] == ["| a", "| b", "| c"]


def test_photo_mosaic_centre_crops_images_of_different_sizes(tmp_path):
    from deepprior.bench import photo

    first = make_data(tmp_path, "A", ["a", "b"], size=(40, 44)).joinpath("MANIFEST.tsv").read_text()
    make_data(tmp_path, "B", ["c", "d"], size=(36, 50))  # rewrites the manifest with B alone
    second = (tmp_path / "MANIFEST.tsv").read_text().splitlines()[1:]
    (tmp_path / "MANIFEST.tsv").write_text(first + "\n".join(second) + "\n")
    sources = photo.source_paths(["A/a", "A/b", "B/c", "B/d"])
    assert sources[0] == "A/a.png" and photo.source_paths(["kodim01"]) == ("CBM3D_color9/kodim01.png",)
    big = photo.make_photo(tmp_path, sources, size=(88, 72))  # 36x44 crops, 72x88 mosaic
    assert big.shape == (72, 88, 3) and big.dtype == np.float32
    assert np.array_equal(np.rint(big * 255), big * 255)  # on the 8-bit grid
    c = np.asarray(PILImage.open(tmp_path / "B" / "c.png"))  # 36x50: its centre 36x44 is the mosaic's third part
    assert np.array_equal(np.rint(big[36:, :44] * 255).astype(np.uint8), c[:, 3:47])
    grey = make_data(tmp_path / "g", "G", ["e", "f", "g", "h"], channels=1)
    with pytest.raises(DeepPriorError, match="four colour images"):
        photo.make_photo(grey, photo.source_paths([f"G/{n}" for n in "efgh"]), size=(88, 72))
