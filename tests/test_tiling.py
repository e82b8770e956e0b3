"""Large images in overlapping tiles: the plan covers the image, the blend has no seam, and
restore() / the command line use it above the pixel budget."""

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from deepprior import restore
from deepprior.cli import main
from deepprior.errors import DeepPriorError
from deepprior.images import Image
from deepprior.tasks import Denoise, FlashNoFlash, Inpaint, SuperResolution
from deepprior.tiling import Blender, blend_weights, plan_tiles


def test_small_image_is_one_tile():
    assert plan_tiles(30, 40, max_fit_pixels=1200) == plan_tiles(30, 40) == plan_tiles(30, 40, max_fit_pixels=10**9)
    assert len(plan_tiles(30, 40, max_fit_pixels=1200)) == 1


@pytest.mark.parametrize("h,w,scale,budget,overlap", [(3000, 4000, 1, 2_000_000, 32), (100, 37, 1, 900, 8),
                                                      (64, 90, 4, 4096, 4), (257, 513, 2, 20000, 16)])
def test_tiles_cover_the_image_within_budget_and_overlap(h, w, scale, budget, overlap):
    tiles = plan_tiles(h, w, scale=scale, max_fit_pixels=budget, overlap=overlap)
    assert len(tiles) > 1
    covered = np.zeros((h, w), dtype=int)
    for t in tiles:
        assert t.height * t.width * scale * scale <= budget
        assert t.top >= 0 and t.left >= 0 and t.top + t.height <= h and t.left + t.width <= w
        covered[t.top : t.top + t.height, t.left : t.left + t.width] += 1
    assert covered.min() >= 1
    # Neighbours share at least the overlap asked for (capped at a quarter of a tile's side).
    side = int(np.sqrt(budget)) // scale
    want = min(overlap, side // 4)
    for a, b in zip(tiles, tiles[1:]):
        if b.top == a.top and b.left > a.left:
            assert a.left + a.width - b.left >= want


def test_budget_too_small_is_a_clear_error():
    with pytest.raises(DeepPriorError, match="too small"):
        plan_tiles(100, 100, scale=4, max_fit_pixels=900)


def test_blend_of_equal_tiles_is_exact_and_ramps_across_seams():
    tiles = plan_tiles(40, 50, max_fit_pixels=400, overlap=6)
    blend = Blender(tiles, 40, 50, 1)
    for t in tiles:
        blend.add(t, np.full((t.height, t.width, 1), 0.3, np.float32))
    np.testing.assert_allclose(blend.result(np.zeros((40, 50, 1))), 0.3, atol=1e-6)
    # Two tiles with different values: across the shared columns the result goes monotonically
    # from one to the other, with no step.
    tiles = plan_tiles(20, 30, max_fit_pixels=400, overlap=8)
    assert len(tiles) == 2
    blend = Blender(tiles, 20, 30, 1)
    blend.add(tiles[0], np.zeros((tiles[0].height, tiles[0].width, 1), np.float32))
    blend.add(tiles[1], np.ones((tiles[1].height, tiles[1].width, 1), np.float32))
    row = blend.result(np.zeros((20, 30, 1)))[5, :, 0]
    assert row[0] == 0 and row[-1] == 1
    assert np.all(np.diff(row) >= 0) and np.diff(row).max() < 0.5
    w = blend_weights(tiles[0], tiles)
    assert w[:, 0].min() == 1 and w[:, -1].max() < 0.2  # border side kept, shared side ramped down


def test_restore_in_tiles_is_full_size_recorded_and_reproducible(rgb32):
    image = Image(np.ascontiguousarray(np.tile(rgb32, (1, 2, 1))))  # 32x64
    a = restore(image, Denoise(), iterations=3, seed=3, threads=1, max_fit_pixels=600, large="tiles")
    b = restore(image, Denoise(), iterations=3, seed=3, threads=1, max_fit_pixels=600, large="tiles")
    assert a.image.pixels.shape == (32, 64, 3)
    np.testing.assert_array_equal(a.image.pixels, b.image.pixels)
    rep = a.report()["tiling"]
    assert rep["tiles"] == rep["tiles_done"] == len(rep["per_tile"]) > 1
    assert a.iterations == 3 * rep["tiles"]
    whole = restore(image, Denoise(), iterations=3, seed=3, threads=1, max_fit_pixels=None)
    assert whole.report()["tiling"] == {"method": "whole", "tiles": 1}


def test_tiles_crop_the_task_data(rgb32):
    image = Image(rgb32)
    fill = np.zeros((32, 32), dtype=bool)
    fill[::4] = True
    tiled = Inpaint(mask=fill).crop(4, 8, 10, 12)
    assert tiled.mask.shape == (10, 12) and tiled.mask[0].all() and not tiled.mask[1].any()
    r = restore(image, Inpaint(mask=fill), iterations=2, threads=1, max_fit_pixels=400, large="tiles")
    known = ~fill
    np.testing.assert_array_equal(r.image.pixels[known], image.pixels[known])  # put back after blending
    flash = FlashNoFlash(flash=Image(rgb32 * 0.5)).crop(2, 3, 5, 6)
    np.testing.assert_array_equal(flash.flash.pixels, rgb32[2:7, 3:9] * 0.5)
    up = restore(Image(rgb32), SuperResolution(scale=2), iterations=2, threads=1, max_fit_pixels=1600, large="tiles")
    assert up.image.pixels.shape == (64, 64, 3) and up.report()["tiling"]["tiles"] > 1


def test_stopping_a_tiled_run_keeps_finished_tiles_and_fills_the_rest_from_the_input(rgb32):
    image = Image(np.ascontiguousarray(np.tile(rgb32, (1, 2, 1))))
    seen = []

    def callback(p):
        seen.append((p.tile, p.tiles))
        return p.tile == 2  # stop during the second tile

    r = restore(image, Denoise(), iterations=4, threads=1, max_fit_pixels=600, large="tiles", callback=callback,
                callback_every=1)
    rep = r.report()
    assert r.outcome.stop_reason == "callback"
    assert rep["tiling"]["tiles_done"] == 2 < rep["tiling"]["tiles"]
    assert seen[0] == (1, rep["tiling"]["tiles"])
    assert r.image.pixels.shape == image.pixels.shape
    assert np.array_equal(r.image.pixels[:, -1], image.pixels[:, -1])  # never reached: the input


def test_cli_tiles_above_max_fit_pixels(tmp_path, rgb32, capsys):
    photo = tmp_path / "photo.png"
    PILImage.fromarray((rgb32 * 255).round().astype(np.uint8)).save(photo)
    out, rep = tmp_path / "out.png", tmp_path / "run.json"
    code = main(["denoise", str(photo), "-o", str(out), "--iters", "2", "-q", "--threads", "1",
                 "--max-fit-pixels", "400", "--large", "tiles", "--report", str(rep)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "tiles of" in err
    assert PILImage.open(out).size == (32, 32)
    assert json.loads(rep.read_text())["tiling"]["tiles"] > 1
    code = main(["denoise", str(photo), "-o", str(tmp_path / "x.png"), "--max-fit-pixels", "-5", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-fit-pixels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
