"""The web app without a browser: its helpers, and the ``/restore`` endpoint through gradio_client.

The server runs in this process on a free port of 127.0.0.1, with tiny images (48-64 px) and a
handful of iterations, so each fit takes a second or two.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from deepprior import webapp  # noqa: E402
from deepprior.errors import DeepPriorError  # noqa: E402
from deepprior.images import load_image  # noqa: E402
from deepprior.tasks import Denoise, Inpaint, SuperResolution  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 64x48 crop of a bundled example photo (a real photograph, not a synthetic pattern)."""
    src = PILImage.open(webapp.EXAMPLES_DIR / "chelsea-noisy.png").convert("RGB")
    path = tmp_path_factory.mktemp("in") / "cat.png"
    src.crop((88, 40, 152, 88)).save(path)
    return path


@pytest.fixture
def settings(tmp_path) -> webapp.Settings:
    return webapp.Settings(max_pixels=10_000, threads=1, workdir=tmp_path)


# -- helpers -------------------------------------------------------------------------------------


def test_examples_are_small_pngs_that_load():
    pngs = sorted(webapp.EXAMPLES_DIR.glob("*.png"))
    assert len(pngs) >= 4
    for p in pngs:
        assert p.stat().st_size < 200_000, p
        image = load_image(p)
        assert max(image.width, image.height) <= 256, p


def test_read_upload_refuses_a_non_image_with_a_plain_message(tmp_path, settings):
    bad = tmp_path / "upload-7f3a.png"
    bad.write_text("this is not a picture")
    with pytest.raises(DeepPriorError) as e:
        webapp.read_upload(bad, settings)
    msg = str(e.value)
    assert "not an image" in msg
    assert str(bad) not in msg  # the server-side temporary path is none of the user's business
    assert "\n" not in msg


def test_read_upload_refuses_too_many_pixels(tmp_path, settings):
    big = tmp_path / "big.png"
    PILImage.new("RGB", (200, 100)).save(big)  # 20 000 pixels, over the limit of 10 000
    with pytest.raises(DeepPriorError, match=r"200x100 = 20,000 pixels; this server takes at most 10,000"):
        webapp.read_upload(big, settings)
    with pytest.raises(DeepPriorError, match="upload the image first"):
        webapp.read_upload(None, settings)


def test_build_task_checks_the_upscaled_size_against_the_pixel_limit(photo, settings):
    image = load_image(photo)  # 64x48 = 3072 pixels; x2 = 12 288 > 10 000
    with pytest.raises(DeepPriorError, match="x2 result would be 128x96"):
        webapp.build_task("upscale", image, settings, scale=2)
    small = image.with_pixels(image.pixels[:32, :32])
    task = webapp.build_task("upscale", small, settings, scale=3)
    assert isinstance(task, SuperResolution) and task.scale == 3
    with pytest.raises(DeepPriorError, match="scale must be one of"):
        webapp.build_task("upscale", small, settings, scale=5)


def test_build_task_inpaint_needs_a_mask_and_takes_a_painted_one(photo, settings):
    image = load_image(photo)
    with pytest.raises(DeepPriorError, match="paint over the area"):
        webapp.build_task("inpaint", image, settings)
    with pytest.raises(DeepPriorError, match="upload the mask"):
        webapp.build_task("reconstruct", image, settings)
    painted = np.zeros((48, 64), bool)
    painted[20:26, 10:50] = True
    task = webapp.build_task("inpaint", image, settings, painted=painted, mode="hole")
    assert isinstance(task, Inpaint) and task.mode == "hole"
    assert task.mask.sum() == painted.sum()
    with pytest.raises(DeepPriorError, match="unknown task"):
        webapp.build_task("colorize", image, settings)


def test_painted_mask_reads_the_editor_layers():
    layer = np.zeros((48, 64, 4), np.uint8)
    layer[10:14, 5:30] = (255, 48, 48, 255)
    mask = webapp.painted_mask({"background": None, "layers": [layer], "composite": None}, (48, 64))
    assert mask.shape == (48, 64) and mask.sum() == 4 * 25
    assert webapp.painted_mask({"layers": [np.zeros((48, 64, 4), np.uint8)]}, (48, 64)) is None
    assert webapp.painted_mask(None, (48, 64)) is None
    # A canvas of another size is scaled to the photo, nearest neighbour.
    half = webapp.painted_mask({"layers": [layer[::2, ::2]]}, (48, 64))
    assert half.shape == (48, 64) and 0 < half.sum() < 48 * 64


def test_fit_options_caps_and_checks(settings):
    fit_whole = {"max_fit_pixels": settings.max_fit_pixels}
    assert webapp.fit_options("fast", None, 3, "preset", settings) == {"seed": 3, **fit_whole}
    assert webapp.fit_options("paper", 0, 0, "off", settings) == {"seed": 0, "stop": "off", **fit_whole}
    assert webapp.fit_options("fast", 40, 1, "auto", settings)["iterations"] == 40
    capped = webapp.Settings(max_iterations=25, threads=1, workdir=settings.workdir)
    assert webapp.fit_options("fast", 400, 0, "preset", capped)["iterations"] == 25
    # Nothing asked: the preset's own count, cut to the cap only where it is longer (the fast
    # denoising preset's 500 to 25; a server cap of 12000 leaves it 500, not 12000).
    denoise = Denoise(sigma=25)
    assert webapp.fit_options("fast", None, 0, "preset", capped, task=denoise)["iterations"] == 25
    roomy = webapp.Settings(max_iterations=12_000, threads=1, workdir=settings.workdir)
    assert "iterations" not in webapp.fit_options("fast", None, 0, "preset", roomy, task=denoise)
    assert webapp.fit_options("fast", 20_000, 0, "preset", roomy, task=denoise)["iterations"] == 12_000
    with pytest.raises(DeepPriorError, match="unknown preset"):
        webapp.fit_options("slow", None, 0, "preset", settings)
    with pytest.raises(DeepPriorError, match="at least 1"):
        webapp.fit_options("fast", -5, 0, "preset", settings)
    assert webapp.fit_options("fast", 30, 0, "auto", settings, bayes=True) == {"seed": 0, "iterations": 30,
                                                                              "stop": "auto", "bayes": True, **fit_whole}


def test_a_hole_filled_without_a_network_says_so(photo):
    from deepprior.degrade import hole_mask
    from deepprior.restoration import restore

    image = load_image(photo)
    result = restore(image, Inpaint(mask=hole_mask((image.height, image.width), seed=0), mode="hole"), "fast",
                     iterations=0, threads=1)
    text = webapp.summary(result)
    assert "0 iterations, no network fitted" in text and "classical start" in text and "from iteration" not in text
    # A fit chosen against its start says what was returned and on what it was chosen.
    chosen = restore(image, Denoise(sigma=25), "fast", iterations=12, threads=1)
    assert chosen.outcome.held_out_errors
    assert f"{webapp.returned_phrase(chosen.outcome)}, which was chosen on pixels held out of the fit" in webapp.summary(chosen)


def test_the_work_of_a_request_counts_the_presets_iterations_cut_only_by_a_shorter_cap(photo, settings):
    pixels = 64 * 48
    capped = webapp.Settings(max_iterations=25, threads=1, workdir=settings.workdir)
    roomy = webapp.Settings(max_iterations=12_000, threads=1, workdir=settings.workdir)
    assert webapp.request_work(photo, "denoise", 4, "text", "fast", None, capped) == pixels * 25
    assert webapp.request_work(photo, "denoise", 4, "text", "fast", None, roomy) == pixels * 500
    assert webapp.request_work(photo, "denoise", 4, "text", "fast", 40, roomy) == pixels * 40


def test_the_work_of_a_hole_fill_in_a_large_photo_counts_a_fit_for_each_window(tmp_path, settings):
    path = tmp_path / "wide.png"
    PILImage.fromarray(np.zeros((600, 1500, 3), np.uint8)).save(path)
    roomy = webapp.Settings(threads=1, workdir=settings.workdir)
    one = np.zeros((600, 1500), bool)
    one[10:30, 10:30] = True
    two = one.copy()
    two[560:590, 1460:1490] = True  # far from the first: a window of its own

    def work(fill):
        return webapp.request_work(str(path), "inpaint", 4, "hole", "fast", None, roomy, mask=lambda size: fill)

    assert work(one) > 0 and work(two) == 2 * work(one)
    assert webapp.request_work(str(path), "inpaint", 4, "hole", "fast", None, roomy) == work(one)  # no mask: one
    # The Restore button's admission reads the uploaded mask: a server whose limit lies between
    # one window's work and two windows' refuses the second mask and takes the first.
    from deepprior.webqueue import ServerQueue

    handlers = webapp.Handlers(roomy, ServerQueue(1, 1, max_work=1.5 * work(one), max_queued_per_client=5))
    answers = []
    for fill in (one, two):
        mask_path = tmp_path / f"mask{len(answers)}.png"
        PILImage.fromarray(fill.astype(np.uint8) * 255).save(mask_path)
        answers.append(handlers.admit_run(str(path), "inpaint", 4, None, str(mask_path), False, "hole", *[None] * 6,
                                          "fast", None, 0, "preset", False, request=None)[0])
    assert answers[0]["is_valid"] and not answers[1]["is_valid"]
    assert "million pixel-iterations" in answers[1]["message"]


def test_bayesian_result_has_a_colour_map_of_its_size_and_says_what_it_averaged(photo):
    from deepprior.restoration import restore
    from deepprior.tasks import Denoise

    image = load_image(photo)
    plain = restore(image, Denoise(), "fast", iterations=12, threads=1)
    assert webapp.uncertainty_image(plain) is None and "from iteration" in webapp.summary(plain)
    bayes = restore(image, Denoise(), "fast", iterations=12, threads=1, bayes=True)
    spread = webapp.uncertainty_image(bayes)
    assert spread.shape == (48, 64, 3) and spread.dtype == np.uint8 and spread.std() > 0
    assert f"mean of {bayes.outcome.samples} posterior samples" in webapp.summary(bayes)


def test_kernel_spec_from_the_controls():
    assert webapp.kernel_spec("gaussian", 1.5, 9, 0, None) == "gaussian:1.5"
    assert webapp.kernel_spec("motion", 1.5, 9, 45, None) == "motion:9,45"
    with pytest.raises(DeepPriorError, match="upload the blur kernel"):
        webapp.kernel_spec("image", 1.5, 9, 0, None)


def test_before_image_matches_the_result_and_shows_the_holes(photo):
    image = load_image(photo)
    fill = np.zeros((48, 64), bool)
    fill[:4] = True
    before = webapp.before_image(image, (96, 128), None)
    assert before.shape == (96, 128, 3) and before.dtype == np.uint8
    tinted = webapp.before_image(image, (48, 64), fill)
    assert (tinted[:4, :, 0] >= tinted[:4, :, 1]).all()  # holes are tinted red
    assert np.array_equal(tinted[4:], webapp.before_image(image, (48, 64), None)[4:])


def test_settings_refuse_nonsense(tmp_path):
    with pytest.raises(DeepPriorError, match="concurrency"):
        webapp.Settings(concurrency=0, workdir=tmp_path)
    with pytest.raises(DeepPriorError, match="max pixels"):
        webapp.Settings(max_pixels=0, workdir=tmp_path)
    assert webapp.Settings(concurrency=2, workdir=tmp_path).threads >= 1


def test_cli_default_pixel_limit_is_the_web_apps():
    import inspect

    from deepprior import cli

    default = inspect.signature(cli.app_command).parameters["max_pixels"].default
    assert default == webapp.DEFAULT_MAX_PIXELS


# -- the /restore endpoint -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    app, url = webapp.launch(port=free_port(), block=False, threads=1, examples=False, max_pixels=20_000)
    try:
        yield app, url
    finally:
        app.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


def test_restore_endpoint_is_listed_with_its_parameters(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert list(info["named_endpoints"]) == ["/restore", "/queue_status"]  # the page's own events are private
    names = [p["parameter_name"] for p in info["named_endpoints"]["/restore"]["parameters"]]
    assert names[:7] == ["image", "task", "scale", "mask", "preset", "max_iterations", "seed"]


def test_restore_endpoint_denoises_and_upscales(server, client, photo):
    out = client.predict(handle_file(str(photo)), "denoise", 2, None, "fast", 4, 0, api_name="/restore")
    with PILImage.open(out) as im:
        assert im.format == "PNG" and im.size == (64, 48) and im.mode == "RGB"
    up = client.predict(handle_file(str(photo)), "upscale", 2, None, "fast", 3, 0, api_name="/restore")
    with PILImage.open(up) as im:
        assert im.format == "PNG" and im.size == (128, 96)
    # Every result is a new file in a new folder, named after the task and never after the upload.
    workdir = server[0].deepprior_settings.workdir
    results = sorted(workdir.glob("run-*/*-restored.png"))
    assert {p.name for p in results} >= {"denoise-restored.png", "upscale-restored.png"}
    assert len({p.parent for p in results}) == len(results)
    assert not list(workdir.glob("run-*/cat*"))


def test_restore_endpoint_inpaints_with_an_uploaded_mask(client, photo, tmp_path):
    mask = np.zeros((48, 64), np.uint8)
    mask[30:34, 8:56] = 255
    mask_path = tmp_path / "mask.png"
    PILImage.fromarray(mask).save(mask_path)
    out = client.predict(handle_file(str(photo)), "inpaint", 2, handle_file(str(mask_path)), "fast", 3, 0,
                         api_name="/restore")
    restored = np.asarray(PILImage.open(out).convert("RGB"))
    original = np.asarray(PILImage.open(photo).convert("RGB"))
    assert restored.shape == original.shape
    known = mask == 0
    assert np.array_equal(restored[known], original[known])  # known pixels are kept as they were


def test_restore_endpoint_reports_bad_input_in_one_line(client, tmp_path, photo):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    with pytest.raises(Exception) as e:
        client.predict(handle_file(str(bad)), "denoise", 2, None, "fast", 3, 0, api_name="/restore")
    assert "not an image file" in str(e.value)
    assert "Traceback" not in str(e.value)
    with pytest.raises(Exception, match="paint over the area to fill, or upload a mask"):
        client.predict(handle_file(str(photo)), "inpaint", 2, None, "fast", 3, 0, api_name="/restore")
    with pytest.raises(Exception, match="x8 result would be 512x384"):  # over this server's 20 000 pixels
        client.predict(handle_file(str(photo)), "upscale", 8, None, "fast", 3, 0, api_name="/restore")


def test_the_brush_and_a_mask_file_give_the_same_result(tmp_path, photo, settings):
    """The same pixels painted in the page's editor or given as a mask file to the command line
    make the same inpainting, to the bit."""
    from deepprior.cli import main
    from deepprior.restoration import restore

    image = webapp.read_upload(photo, settings)
    fill = np.zeros((image.height, image.width), bool)
    fill[10:20, 12:40] = True
    layer = np.zeros((image.height, image.width, 4), np.uint8)
    layer[fill] = (255, 0, 0, 255)
    painted = webapp.painted_mask({"background": None, "layers": [layer], "composite": None},
                                  (image.height, image.width))
    task = webapp.build_task("inpaint", image, settings, painted=painted)
    fit_kw = webapp.fit_options("fast", 4, 7, "preset", settings)
    web = webapp.write_result(restore(image, task, "fast", threads=settings.threads, **fit_kw), "inpaint", settings)

    mask = tmp_path / "mask.png"
    PILImage.fromarray(fill.astype(np.uint8) * 255).save(mask)
    out = tmp_path / "cli.png"
    assert main(["inpaint", str(photo), "--mask", str(mask), "-o", str(out), "--iters", "4", "--seed", "7",
                 "--threads", str(settings.threads), "--quiet"]) == 0
    assert np.array_equal(np.asarray(PILImage.open(web)), np.asarray(PILImage.open(out)))


def test_large_results_are_shown_shrunk_and_downloaded_whole():
    big = np.random.default_rng(0).random((1500, 2000, 3)).astype(np.float32)
    shown = webapp.for_display(big)
    assert shown.dtype == np.uint8 and shown.shape[0] * shown.shape[1] <= webapp.DISPLAY_PIXELS
    assert abs(shown.shape[1] / shown.shape[0] - 2000 / 1500) < 0.01
    small = big[:100, :120]
    assert webapp.for_display(small).shape == (100, 120, 3)


def test_the_status_line_names_the_stages_without_iterations():
    """While the classical start is made there is no loss, ETA or preview yet: the line says what runs."""
    from deepprior.webapp import _progress_frame

    snap = {"it": 0, "max": 500, "loss": math.nan, "elapsed": 3.0, "eta": math.nan, "tile": 1, "tiles": 1,
            "stage": "start"}
    line = _progress_frame(snap, [], False)[0]
    assert "Making the classical start" in line and "left" not in line and "nan" not in line.lower()
    snap.update(stage="restart", it=500, eta=12.0, tile=2, tiles=3)
    line = _progress_frame(snap, [], False)[0]
    assert "Tile 2 / 3" in line and "again from every pixel" in line and "0:12 left" in line
    snap.update(stage="fit", it=10, loss=0.01)
    assert "Iteration 10 / 500" in _progress_frame(snap, [], False)[0]
