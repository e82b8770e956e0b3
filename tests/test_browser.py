"""The web app in a real browser: Playwright driving Debian's Chromium against a live server.

Each test uploads a small real photo (a 64x48 crop of a bundled example), runs a fit of a few
dozen iterations and checks what a person would see: the live preview, the result, the download,
the error messages. Screenshots go to ``test-output/browser/`` (git-ignored).

Chromium comes from Debian (``apt-get install chromium``; ``.ci/run`` installs it), never from
``playwright install``. Without it these tests fail under CI=true and are skipped elsewhere.
"""

from __future__ import annotations

import re
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("gradio")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from deepprior import webapp  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "browser"
FIT_TIMEOUT_MS = 90_000  # generous: the machine running the tests may be busy


def _require_chromium():
    if Path(CHROMIUM).exists():
        return
    reason = f"{CHROMIUM} not found: install it with `apt-get install --no-install-recommends chromium`"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    _require_chromium()
    app, url = webapp.launch(port=_free_port(), block=False, threads=1, preview_every=0.5,
                             max_upload_mb=0.05, max_pixels=40_000)
    try:
        yield url
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.goto(server)
    pg.wait_for_selector("#run")
    yield pg
    context.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    src = PILImage.open(webapp.EXAMPLES_DIR / "chelsea-noisy.png").convert("RGB")
    path = tmp_path_factory.mktemp("browser") / "cat.png"
    src.crop((88, 40, 152, 88)).save(path)  # 64x48, the cat's eyes
    return path


# -- what a person does ----------------------------------------------------------------------


def upload(page, path: Path) -> None:
    page.set_input_files("#input-image input[type=file]", str(path))
    expect(page.locator("#image-info")).to_contain_text("x", timeout=20_000)


def choose_task(page, label: str) -> None:
    page.locator("#task").get_by_label(label, exact=True).check()


def set_iterations(page, n: int, stop: str | None = None) -> None:
    page.get_by_text("Advanced", exact=True).click()
    page.locator("#iterations input").fill(str(n))
    if stop is not None:
        page.locator("#stop-mode").get_by_label(stop, exact=True).check()


def watch_result_labels(page) -> None:
    """Record every label the result image shows, so a preview that came and went is seen."""
    page.evaluate(
        """() => {
            window.__labels = [];
            const box = document.querySelector('#result-image');
            const note = () => window.__labels.push(box.querySelector('label')?.textContent.trim() || '');
            new MutationObserver(note).observe(box, {subtree: true, childList: true, characterData: true});
        }"""
    )


def run_to_the_end(page) -> None:
    """Press Restore and wait for the download button, or fail at once with the page's error."""
    page.locator("#run").click()
    wait_for_result(page)


def wait_for_result(page) -> None:
    errors = page.locator(".toast-body.error")
    expect(page.locator("#download").or_(errors).first).to_be_visible(timeout=FIT_TIMEOUT_MS)
    if errors.count():
        pytest.fail(f"the page shows an error: {errors.first.inner_text()}")


def download(page, tmp_path: Path) -> Path:
    with page.expect_download() as info:
        page.locator("#download").click()
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    return target


def report_value(page, key: str) -> str:
    """The first value of ``key`` in the page's full JSON report, as text."""
    page.get_by_text("Full report", exact=True).click()
    text = re.sub(r"\s*\n\s*", "", page.locator("#report-json").inner_text())  # one token a line
    found = re.search(rf'"{key}":"?([^",}}]+)', text)
    assert found, f"{key} not in the report: {text[:300]}"
    return found.group(1)


# -- tests ---------------------------------------------------------------------------------------


def test_denoise_shows_a_live_preview_then_the_result_as_a_png_download(page, photo, tmp_path):
    upload(page, photo)
    expect(page.locator("#image-info")).to_contain_text("64x48 RGB")
    set_iterations(page, 30, stop="Off: run to the cap")
    watch_result_labels(page)
    run_to_the_end(page)
    labels = page.evaluate("window.__labels")
    assert any(label.startswith("Live preview (iteration") for label in labels), labels
    expect(page.locator("#result-image label")).to_have_text("Result")
    expect(page.locator("#report")).to_contain_text("30 iterations, ran every iteration")
    expect(page.locator("#status")).to_contain_text("Finished: 30 iterations")
    expect(page.locator("#compare")).to_be_visible()
    page.screenshot(path=str(SHOTS / "denoise-done.png"), full_page=True)
    saved = download(page, tmp_path)
    assert saved.name == "denoise-restored.png"
    with PILImage.open(saved) as im:
        assert im.format == "PNG" and im.size == (64, 48) and im.mode == "RGB"
        restored = np.asarray(im, dtype=np.float32)
    assert restored.std() > 5  # a picture, not a blank


def test_the_status_says_while_the_classical_start_is_made(page, photo, monkeypatch):
    """A start that takes seconds (BM3D on a large photo takes minutes): the status line names it,
    and its clock runs on though the fit reports nothing until its first iteration."""
    from deepprior import tasks

    def slow(real):
        def denoise(*args, **kwargs):
            time.sleep(2.5)
            return real(*args, **kwargs)
        return denoise

    for name, real in list(tasks.DENOISERS.items()):
        monkeypatch.setitem(tasks.DENOISERS, name, slow(real))
    upload(page, photo)
    set_iterations(page, 10)
    page.evaluate(
        """() => {
            window.__status = [];
            const box = document.querySelector('#status');
            new MutationObserver(() => window.__status.push(box.textContent.trim()))
                .observe(box, {subtree: true, childList: true, characterData: true});
        }"""
    )
    run_to_the_end(page)
    making = [t for t in page.evaluate("window.__status") if "Making the classical start" in t]
    assert making, page.evaluate("window.__status")
    assert any(re.search(r"0:0[12] elapsed", t) for t in making), making


def test_bayesian_mode_shows_an_uncertainty_map(page, photo):
    upload(page, photo)
    set_iterations(page, 20)
    page.locator("#bayes input").check()
    expect(page.locator("#uncertainty-image")).to_be_hidden()
    run_to_the_end(page)
    expect(page.locator("#uncertainty-image img")).to_be_visible()
    expect(page.locator("#report")).to_contain_text("posterior samples")
    page.screenshot(path=str(SHOTS / "bayes-done.png"), full_page=True)
    # a plain run hides the map again as it starts
    page.locator("#bayes input").uncheck()
    page.locator("#run").click()
    expect(page.locator("#uncertainty-image")).to_be_hidden()
    wait_for_result(page)


def test_upscale_x2_shows_its_controls_and_doubles_the_size(page, photo, tmp_path):
    expect(page.locator("#scale")).to_be_hidden()
    upload(page, photo)
    choose_task(page, "Upscale")
    expect(page.locator("#scale")).to_be_visible()
    expect(page.locator("#mask-editor")).to_be_hidden()
    page.locator("#scale").get_by_label("x2", exact=True).check()
    set_iterations(page, 10)
    run_to_the_end(page)
    expect(page.locator("#report")).to_contain_text("128x96 RGB")
    page.screenshot(path=str(SHOTS / "upscale-done.png"), full_page=True)
    with PILImage.open(download(page, tmp_path)) as im:
        assert im.size == (128, 96)


def test_inpaint_a_painted_stroke(page, photo):
    upload(page, photo)
    choose_task(page, "Inpaint (fill a painted area)")
    editor = page.locator("#mask-editor")
    expect(editor).to_be_visible()
    canvas = editor.locator("canvas").first
    expect(canvas).to_be_visible(timeout=20_000)
    # The zoom level appears once the editor has laid the photo on its canvas; 64 px is blown up.
    expect(editor).to_contain_text(re.compile(r"[1-9]\d\d+%"), timeout=20_000)
    page.wait_for_timeout(500)
    box = canvas.bounding_box()
    y = box["y"] + box["height"] * 0.5
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * step), y, steps=2)
    page.mouse.up()
    page.screenshot(path=str(SHOTS / "inpaint-painted.png"), full_page=True)
    set_iterations(page, 10)
    run_to_the_end(page)
    expect(page.locator("#report")).to_contain_text("(inpaint, preset fast")
    missing = float(report_value(page, "missing_fraction"))
    assert 0.0 < missing < 0.6, missing  # a stroke, not the whole photo
    page.screenshot(path=str(SHOTS / "inpaint-done.png"), full_page=True)


def test_stop_ends_the_fit_and_keeps_the_best_result(page, photo, tmp_path):
    upload(page, photo)
    set_iterations(page, 5000, stop="Off: run to the cap")
    page.locator("#run").click()
    expect(page.locator("#result-image label")).to_contain_text("Live preview (iteration", timeout=FIT_TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("/ 5000")
    expect(page.locator("#status")).to_contain_text("left")
    page.screenshot(path=str(SHOTS / "stop-mid-run.png"), full_page=True)
    page.locator("#stop").click()
    wait_for_result(page)
    expect(page.locator("#report")).to_contain_text("stopped by you")
    assert report_value(page, "stop_reason") == "callback"
    done = int(re.search(r"(\d+) iterations", page.locator("#report").inner_text()).group(1))
    assert 0 < done < 5000
    with PILImage.open(download(page, tmp_path)) as im:
        assert im.size == (64, 48)


def test_a_non_image_upload_shows_a_readable_error(page, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("these are my holiday notes, not a picture")
    page.set_input_files("#input-image input[type=file]", str(fake))
    toast = page.locator(".toast-body").filter(has_text="not an image file")
    expect(toast).to_be_visible(timeout=20_000)
    page.screenshot(path=str(SHOTS / "error-not-an-image.png"))
    assert "Traceback" not in page.content()
    assert "holiday" not in toast.inner_text()  # no server paths or file names in the message
    page.locator("#run").click()  # restoring it anyway says the same, and nothing is produced
    expect(page.locator(".toast-body").filter(has_text="not an image file")).to_be_visible(timeout=20_000)
    expect(page.locator("#download")).to_be_hidden()


def test_uploads_over_the_limits_are_refused_with_a_reason(page, tmp_path):
    heavy = tmp_path / "heavy.png"  # 60 000 bytes of noise: over this server's 0.05 MB
    PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (100, 200, 3), np.uint8)).save(heavy)
    assert heavy.stat().st_size > 0.05 * 1024 * 1024
    page.set_input_files("#input-image input[type=file]", str(heavy))
    expect(page.locator(".toast-body.error")).to_contain_text("exceed the maximum allowed size", timeout=20_000)
    page.screenshot(path=str(SHOTS / "error-too-large.png"))
    page.reload()
    page.wait_for_selector("#run")
    wide = tmp_path / "wide.png"  # 300x150 = 45 000 pixels, over this server's 40 000, yet a small file
    PILImage.new("RGB", (300, 150), (90, 120, 150)).save(wide)
    page.set_input_files("#input-image input[type=file]", str(wide))
    toast = page.locator(".toast-body.error").filter(has_text="45,000 pixels; this server takes at most 40,000")
    expect(toast).to_be_visible(timeout=20_000)


def test_an_example_fills_in_the_form(page):
    page.locator("#task").get_by_label("Denoise", exact=True).check()
    page.get_by_role("row").filter(has_text="Inpaint").first.click()
    expect(page.locator("#task").get_by_label("Inpaint (fill a painted area)", exact=True)).to_be_checked()
    expect(page.locator("#image-info")).to_contain_text("240x160 RGB", timeout=20_000)
    expect(page.locator("#mask-editor")).to_be_visible()
    expect(page.locator("#mask-upload img")).to_be_visible()
    expect(page.locator("#scale")).to_be_hidden()


def test_the_documentation_screenshot_shows_a_fit_in_progress(browser):
    """The README's picture of the app: a bundled example being denoised with the default preset,
    taken once its live preview and loss curve are on the page (then the fit is stopped).
    It goes to ``test-output/browser/app.png``, and to ``docs/screenshot-app.png`` when
    ``DEEPPRIOR_DOCS_SCREENSHOT=1`` is set."""
    app, url = webapp.launch(port=_free_port(), block=False, threads=1, preview_every=1.0)
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(url)
        upload(page, webapp.EXAMPLES_DIR / "chelsea-noisy.png")
        expect(page.locator("#image-info")).to_contain_text("240x160 RGB")
        page.locator("#run").click()
        expect(page.locator("#status")).to_contain_text(re.compile(r"Iteration ([4-9]\d|\d{3}) / 500"),
                                                        timeout=FIT_TIMEOUT_MS)
        expect(page.locator("#result-image label")).to_contain_text("Live preview (iteration", timeout=FIT_TIMEOUT_MS)
        expect(page.locator("#loss-plot img")).to_be_visible(timeout=FIT_TIMEOUT_MS)
        page.screenshot(path=str(SHOTS / "app.png"))
        if os.environ.get("DEEPPRIOR_DOCS_SCREENSHOT") == "1":
            page.screenshot(path=str(Path(__file__).resolve().parents[1] / "docs" / "screenshot-app.png"))
        page.locator("#stop").click()
        wait_for_result(page)
        context.close()
    finally:
        app.close()


def test_a_waiting_page_shows_its_place_in_the_queue(browser, photo):
    """One fit at a time: while one page's long fit runs, a second page's request waits and says
    where it stands; closing the first page ends its fit, and the second runs."""
    app, url = webapp.launch(port=_free_port(), block=False, threads=1, concurrency=1, examples=False)
    try:
        pages = []
        for _ in range(2):
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            pg = context.new_page()
            pg.goto(url)
            pg.wait_for_selector("#run")
            upload(pg, photo)
            pages.append((context, pg))
        (first_context, first), (second_context, second) = pages
        set_iterations(first, 5000, stop="Off: run to the cap")
        first.locator("#run").click()
        expect(first.locator("#status")).to_contain_text("/ 5000", timeout=FIT_TIMEOUT_MS)
        set_iterations(second, 20, stop="Off: run to the cap")
        second.locator("#run").click()
        expect(second.locator("#queue")).to_contain_text("In the queue: 1st in line", timeout=20_000)
        expect(second.locator("#queue")).to_contain_text("should start in about")
        second.screenshot(path=str(SHOTS / "queue-waiting.png"), full_page=True)
        first_context.close()  # the tab goes away: its fit is abandoned and the second one runs
        wait_for_result(second)
        expect(second.locator("#status")).to_contain_text("Finished: 20 iterations")
        abandoned = [j for j in app.deepprior_queue.jobs if j.outcome == "abandoned"]
        assert len(abandoned) == 1
        second_context.close()
    finally:
        app.close()


def test_an_image_above_the_fit_whole_size_is_fitted_on_crops_and_downloads_at_full_size(browser, photo, tmp_path):
    """The path a 12-megapixel upload takes, on a photo made large by a small fit-whole size:
    the fit on crops, the final pass over the image, the full-size PNG."""
    app, url = webapp.launch(port=_free_port(), block=False, threads=1, preview_every=0.5, examples=False,
                             max_fit_pixels=2000)
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#run")
        upload(page, photo)
        set_iterations(page, 40)
        run_to_the_end(page)
        expect(page.locator("#status")).to_contain_text("Finished: 40 iterations")
        assert report_value(page, "method") == "crops"
        saved = download(page, tmp_path)
        with PILImage.open(saved) as im:
            assert im.format == "PNG" and im.size == (64, 48)
            assert np.asarray(im, dtype=np.float32).std() > 5
        context.close()
    finally:
        app.close()
