"""Large images fitted on crops: the tiled pass equals a whole-image forward pass, the crops'
data term is the whole image's restricted to them, and the fit is reproducible by seed."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from deepprior import restore
from deepprior import cropfit
from deepprior.cropfit import (Canvas, fit_crops, fit_on_crops, forward_tiled, make_canvas, receptive_radius,
                              settle_batchnorm)
from deepprior.errors import DeepPriorError
from deepprior.fitting import init_weights, make_input
from deepprior.images import Image
from deepprior.networks import NetConfig, build_network
from deepprior.presets import get_preset
from deepprior.restoration import large_image_method
from deepprior.tasks import Denoise, Inpaint, SuperResolution

# Three scales (factor 8, receptive radius under 50 pixels): small enough that a 64x96 image
# holds several tiles, each with its full receptive field as context.
SMALL_NET = NetConfig(channels_down=(8, 8, 8), channels_up=(8, 8, 8), channels_skip=(2, 2, 2), pad="zeros")


def small_config(**kw):
    cfg = replace(get_preset("denoise", "fast"), net=SMALL_NET, input_depth=5, crop_iterations=4, crop_size=32,
                  crop_batch=2, crop_trim=4)
    return replace(cfg, **kw)


def settled_network(seed=0):
    """A small network in evaluation mode with non-trivial BatchNorm statistics."""
    net = build_network(SMALL_NET, 5, 3)
    init_weights(net, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        net.train()
        net(torch.rand(2, 5, 64, 64, generator=torch.Generator().manual_seed(seed + 1)))
    return net.eval()


def test_the_tiled_pass_equals_a_whole_image_forward_pass():
    net = settled_network()
    z = torch.rand(1, 5, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = net(z)
    radius = receptive_radius(net)
    assert 8 < radius < 64
    tiled, done = forward_tiled(net, z, tile=16, context=radius, factor=8)
    assert bool(done.all())
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    # A window of the canvas is that window of the whole pass.
    part, _ = forward_tiled(net, z, tile=16, context=radius, factor=8, window=(8, 24, 40, 50))
    torch.testing.assert_close(part, whole[..., 8:48, 24:74], atol=1e-5, rtol=0)
    # Context narrower than the field: the tiles are cut off from part of what they see.
    narrow, _ = forward_tiled(net, z, tile=16, context=0, factor=8)
    assert (narrow - whole).abs().max() > 1e-4


@pytest.mark.parametrize("task", [Denoise(), SuperResolution(scale=2),
                                  Inpaint(mask=np.arange(64 * 96).reshape(64, 96) % 3 == 0)])
def test_a_window_loss_is_the_whole_data_term_restricted_to_its_pixels(task, house):
    s = getattr(task, "scale", 1)
    image = Image(np.ascontiguousarray(house[:64 // s, :96 // s]))
    problem = task.problem(image)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    whole = (problem.operator(x) - problem.target) ** 2
    top, left, h, w = 16, 32, 32, 48  # an interior window, its corner on every scale's grid
    total, count = problem.window_loss(x[..., top : top + h, left : left + w], top, left, (0, 0, 0, 0))
    r = problem.operator.reach
    rows = slice(top // s + r, (top + h) // s - r)
    cols = slice(left // s + r, (left + w) // s - r)
    assert count == whole[..., rows, cols].numel() > 0
    torch.testing.assert_close(total, whole[..., rows, cols].sum())
    # A window on the image's corner: no reach is lost on the sides it shares with the image.
    total, count = problem.window_loss(x[..., :h, :w], 0, 0, (0, 0, 0, 0))
    torch.testing.assert_close(total, whole[..., : h // s - r, : w // s - r].sum())


def test_the_crop_fit_gives_its_network_on_the_whole_image_and_is_reproducible(house):
    image = Image(np.ascontiguousarray(house[:64, :96]))
    cfg = replace(small_config(), select_start=False)  # the fit itself: a fit this short loses to its start
    fitted = fit_on_crops(Denoise(sigma=25).problem(image), cfg, seed=5)
    assert not fitted.net.training and fitted.iterations == 4
    with torch.no_grad():
        whole = fitted.net(fitted.z.full())
    tiled, _ = forward_tiled(fitted.net, fitted.z, tile=16, context=receptive_radius(fitted.net), factor=8)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    a = fit_crops(Denoise(sigma=25).problem(image), cfg, seed=5, tile=16, context=48)
    b = fit_crops(Denoise(sigma=25).problem(image), cfg, seed=5, tile=16, context=48)
    np.testing.assert_array_equal(a.output, b.output)
    c = fit_crops(Denoise(sigma=25).problem(image), cfg, seed=6, tile=16, context=48)
    assert not np.array_equal(a.output, c.output)
    assert a.output.shape == (64, 96, 3)


def test_the_compact_canvas_keeps_the_estimate_exact_and_rounds_only_the_noise(house):
    image = Image(np.ascontiguousarray(house[:64, :96]))
    problem = Denoise(sigma=25).problem(image)
    cfg = small_config()
    start = problem.estimate()
    canvas = make_canvas(cfg, problem, (64, 96), torch.Generator().manual_seed(0), estimate=start)
    assert canvas.shape == (1, 5, 64, 96) and canvas.exact.dtype == torch.float32
    assert canvas.noise.dtype == torch.float16 and canvas.noise.shape[1] == 2
    full = canvas.full()
    torch.testing.assert_close(full[0, :3], torch.from_numpy(np.moveaxis(start, -1, 0)), atol=0, rtol=0)
    assert 0 <= float(full[:, 3:].min()) and float(full[:, 3:].max()) <= cfg.input_scale
    assert full[:, 3:].std() > 0.2 * cfg.input_scale  # noise, not a constant
    torch.testing.assert_close(canvas.window(8, 16, 24, 40), full[..., 8:32, 16:56], atol=0, rtol=0)
    # The same input as the whole fit's, but for the noise's rounding.
    whole = make_input(cfg, problem, (64, 96), torch.Generator().manual_seed(0), estimate=start)
    torch.testing.assert_close(full[:, :3], whole[:, :3], atol=0, rtol=0)
    torch.testing.assert_close(canvas.noise, whole[:, 3:].half(), atol=0, rtol=0)
    # An optimised input stays whole, in float32 (Adam steps it).
    kept = make_canvas(replace(cfg, optimize_input=True), problem, (64, 96), torch.Generator().manual_seed(0))
    assert kept.noise.shape[1] == 0 and kept.exact.shape == (1, 5, 64, 96) and kept.exact.dtype == torch.float32

def test_the_fit_starts_at_the_estimate_and_a_stop_keeps_it_where_no_tile_ran(house):
    image = Image(np.ascontiguousarray(house[:64, :96]))
    seen = []

    def callback(p):
        seen.append((p.stage, p.iteration, p.eta_s))
        return p.stage == "apply"  # stop once the first tile of the final pass is done

    problem = Denoise(sigma=25).problem(image)
    start = problem.estimate()
    # The crop fit itself: no held-out pixels, no choice against the start.
    out = fit_crops(problem, small_config(crop_iterations=0, select_start=False), seed=0, tile=16, context=48)
    np.testing.assert_allclose(out.output, np.clip(start, 1e-3, 1 - 1e-3), atol=1e-5)  # no step: the start
    stopped = fit_crops(Denoise(sigma=25).problem(image), small_config(select_start=False), seed=0, tile=16, context=48,
                        callback=callback, callback_every=1)
    assert stopped.stop_reason == "callback"
    assert [s for s, *_ in seen].count("apply") == 1
    np.testing.assert_array_equal(stopped.output[-16:], np.clip(start[-16:], 0, 1))  # never reached: the start
    etas = [e for s, _, e in seen if s == "fit"]
    assert etas[-1] < etas[0]


def bn_statistics(net):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in net.modules()
            if isinstance(m, torch.nn.BatchNorm2d)]


def test_measuring_batchnorm_reports_each_batch_and_stops_cleanly(monkeypatch):
    z = Canvas(torch.rand(1, 5, 64, 96, generator=torch.Generator().manual_seed(2)))
    cfg = small_config()
    before = bn_statistics(settled_network())
    seen = []
    net = settled_network()
    done = settle_batchnorm(net, z, cfg, torch.Generator().manual_seed(0), "cpu", (32, 32), 8,
                            on_batch=lambda d, n: seen.append((d, n)) or d == 3)
    assert done == 3 and seen == [(1, cropfit.BN_BATCHES), (2, cropfit.BN_BATCHES), (3, cropfit.BN_BATCHES)]
    assert not net.training
    assert all(not torch.equal(a[0], b[0]) for a, b in zip(bn_statistics(net), before))  # measured on the crops
    # Ctrl-C after two batches keeps their average; before the first, the fit's statistics stay.
    def interrupt(d, n):
        if d == 2:
            raise KeyboardInterrupt
    net = settled_network()
    assert settle_batchnorm(net, z, cfg, torch.Generator().manual_seed(0), "cpu", (32, 32), 8, on_batch=interrupt) == 2
    assert not net.training
    def no_crops(*a):
        raise KeyboardInterrupt
    monkeypatch.setattr(cropfit, "draw_crops", no_crops)
    net = settled_network()
    assert settle_batchnorm(net, z, cfg, torch.Generator().manual_seed(0), "cpu", (32, 32), 8) == 0
    for (m, v), (m0, v0) in zip(bn_statistics(net), before):
        torch.testing.assert_close(m, m0, atol=0, rtol=0)
        torch.testing.assert_close(v, v0, atol=0, rtol=0)


def test_a_stop_while_batchnorm_is_measured_still_applies_the_fit(house):
    image = Image(np.ascontiguousarray(house[:64, :96]))
    seen = []

    def callback(p):
        seen.append((p.stage, p.tile, p.eta_s))
        return p.stage == "settle" and p.tile == 2

    out = fit_crops(Denoise(sigma=25).problem(image), small_config(select_start=False), seed=0, tile=16, context=48,
                    callback=callback, callback_every=1)
    settle = [(t, e) for s, t, e in seen if s == "settle"]
    assert [t for t, _ in settle] == [1, 2]
    assert all(np.isfinite(e) and e > 0 for _, e in settle)  # the batches left and the final pass
    assert [s for s, *_ in seen].count("apply") == 24  # the pass still runs over every tile
    assert out.output.shape == (64, 96, 3) and np.isfinite(out.output).all()


def test_large_images_go_to_crops_when_the_preset_can():
    fast = get_preset("denoise", "fast")
    assert large_image_method(fast, 1000, 2000) == "whole"
    assert large_image_method(fast, 1000, None) == "whole"
    assert large_image_method(fast, 3000, 2000) == "crops"
    assert large_image_method(fast, 3000, 2000, "tiles") == "tiles"
    assert large_image_method(get_preset("inpaint", "fast"), 3000, 2000) == "crops"  # text starts from a fill
    hole = get_preset("hole", "fast")
    assert large_image_method(hole, 3000, 2000) == "whole"  # drawn at a fixed size: its cost does not grow
    assert large_image_method(replace(hole, iterations=0), 3000, 2000) == "whole"  # the start alone
    assert large_image_method(hole, 3000, 2000, "tiles") == "tiles"
    # Above its work size a hole is filled from a window around it, reduced to that size.
    above = hole.work_pixels + 1
    assert large_image_method(hole, above, None) == large_image_method(hole, above, 2000) == "window"
    assert large_image_method(replace(hole, iterations=0), above, None) == "window"  # so is the start alone
    assert large_image_method(hole, above, 2000, "tiles") == "tiles"  # a method asked for is kept
    hole_fit = replace(hole, draw_pixels=0)  # drawn at full size from noise: tile by tile
    assert large_image_method(hole_fit, 3000, 2000) == "tiles"
    with pytest.raises(DeepPriorError, match="cannot fit on crops"):
        large_image_method(hole_fit, 3000, 2000, "crops")
    bayes = replace(fast, bayes=True)
    assert large_image_method(bayes, 3000, 2000) == "tiles"
    with pytest.raises(DeepPriorError, match="Bayesian"):
        large_image_method(bayes, 3000, 2000, "crops")
    with pytest.raises(DeepPriorError, match="large-image method"):
        large_image_method(fast, 3000, 2000, "halves")


def test_restore_reports_a_crop_fit(house):
    image = Image(np.ascontiguousarray(house[:64, :96]))
    r = restore(image, Denoise(sigma=25), seed=1, threads=1, max_fit_pixels=1000, net=SMALL_NET, input_depth=5,
                crop_iterations=3, crop_size=32, crop_batch=2)
    rep = r.report()
    assert rep["tiling"]["method"] == "crops" and rep["tiling"]["crops"] == 6
    assert r.image.pixels.shape == (64, 96, 3) and r.iterations == 3


def test_the_command_line_fits_a_large_image_on_crops(tmp_path, house, capsys):
    import json

    from PIL import Image as PILImage

    from deepprior.cli import main

    photo = tmp_path / "photo.png"
    PILImage.fromarray((house[:64, :96] * 255).round().astype(np.uint8)).save(photo)
    out, rep = tmp_path / "out.png", tmp_path / "run.json"
    code = main(["denoise", str(photo), "-o", str(out), "--sigma", "25", "--iters", "5", "-q", "--threads", "1",
                 "--max-fit-pixels", "2000", "--report", str(rep)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "fitted on 40 crops of 96x64 (5 iterations" in err
    assert PILImage.open(out).size == (96, 64)
    assert json.loads(rep.read_text())["tiling"]["method"] == "crops"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_the_crop_fit_runs_on_cuda(house):
    image = Image(np.ascontiguousarray(house[:64, :96]))
    out = fit_crops(Denoise(sigma=25).problem(image), small_config(), seed=0, device="cuda", tile=16, context=48)
    assert out.output.shape == (64, 96, 3) and np.isfinite(out.output).all()


def _large_tasks(shape):
    from deepprior.degrade import text_mask

    return {"denoise": Denoise(sigma=25), "upscale": SuperResolution(scale=2),
            "inpaint": Inpaint(mask=text_mask(shape, "dip", seed=0), mode="text")}


@pytest.mark.parametrize("kind", ["denoise", "upscale", "inpaint"])
def test_a_text_fill_and_an_upscale_fit_on_crops_too(house, kind):
    image = Image(np.ascontiguousarray(house[:64, :96]))
    task = _large_tasks((64, 96))[kind]
    r = restore(image, task, seed=0, threads=1, max_fit_pixels=1000, net=SMALL_NET, input_depth=5,
                crop_iterations=3, crop_size=32, crop_batch=2)
    scale = 2 if kind == "upscale" else 1
    assert r.tiling["method"] == "crops" and r.image.pixels.shape == (64 * scale, 96 * scale, 3)
    if kind == "inpaint":  # the known pixels come back exactly
        known = ~task.mask
        np.testing.assert_array_equal(r.image.pixels[known], image.pixels[known])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("kind", ["denoise", "upscale", "inpaint"])
@pytest.mark.parametrize("large", ["whole", "crops"])
def test_each_task_runs_on_cuda_reproducibly_and_close_to_the_cpu(house, kind, large):
    image = Image(np.ascontiguousarray(house[:64, :96]))
    task = _large_tasks((64, 96))[kind]
    options = dict(seed=3, iterations=20, stop="off", net=SMALL_NET, input_depth=5, crop_iterations=20, crop_size=32,
                   crop_batch=2,
                   max_fit_pixels=1000 if large == "crops" else None)
    gpu = [restore(image, task, device="cuda", **options) for _ in range(2)]
    cpu = restore(image, task, device="cpu", threads=1, **options)
    assert gpu[0].device.startswith("cuda") and gpu[0].report()["tiling"]["method"] == large
    assert np.isfinite(gpu[0].image.pixels).all()
    # CUDA's backward kernels of upsampling and padding add in a varying order, so one seed's runs
    # agree only to a grey level or so here (1.4/255 at most, measured on an H200), not bit for bit.
    assert np.abs(gpu[0].image.pixels - gpu[1].image.pixels).mean() < 1 / 255
    # The perturbation noise is drawn on the device, so the two devices' fits differ, a little.
    assert np.abs(gpu[0].image.pixels - cpu.image.pixels).mean() < 0.02


def _two_halves(seed=0):
    """A 64x128 denoising problem with held-out pixels, and two estimates: one exact on the left
    half and off by 0.2 on the right, the other the reverse."""
    rng = np.random.default_rng(seed)
    truth = np.clip(0.5 + 0.1 * rng.standard_normal((64, 128, 3)), 0, 1).astype(np.float32)
    noisy = (truth + 0.05 * rng.standard_normal(truth.shape)).astype(np.float32)
    problem = Denoise(sigma=12.75).problem(Image(noisy))
    problem.hold_out(rng.random((64, 128)) < 0.2)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 0)))[None]  # noqa: E731
    good_left, good_right = truth.copy(), truth.copy()
    good_left[:, 64:] += 0.2
    good_right[:, :64] += 0.2
    return problem, t(good_left), t(good_right)


def test_each_region_chooses_its_own_share_and_the_shares_meet_without_a_seam():
    from deepprior.fitting import region_choices, region_shares, select_by_region, share_map

    assert region_shares((0.0, 0.5, 1.0)) == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert region_shares((0.0, 0.5)) == (0.0, 0.25, 0.5)
    problem, fit, start = _two_halves()
    grid = region_choices(problem, fit, start, (0.0, 0.5, 1.0), chosen=0.5, region=64)
    assert grid.tolist() == [[1.0, 0.0]]  # the fit where it is exact, the start where that is

    share = share_map(np.array([[1.0, 0.0]]), (64, 128), region=64)
    assert share.shape == (1, 1, 64, 128)
    assert float(share[..., :32].min()) == 1.0 and float(share[..., 96:].max()) == 0.0  # each region's own up to its centre
    steps = share[0, 0, 0].diff().abs()
    assert float(steps.max()) <= 1 / 64 + 1e-6  # then a ramp between the centres, not a jump
    assert torch.equal(share_map(np.full((2, 3), 0.75), (70, 150), region=64), torch.full((1, 1, 70, 150), 0.75))

    full = start + 0.01  # the start made again from every pixel is what a chosen start returns
    result, weight, _, _, returned, grid = select_by_region(problem, fit, start, (0.0, 0.5, 1.0), remake=lambda make: (
        full[0].permute(1, 2, 0).numpy()), region=64)
    assert returned == "blend" and grid.tolist() == [[1.0, 0.0]] and weight == pytest.approx(0.5)
    expected = share * fit + (1 - share) * full
    assert torch.allclose(result, expected)


def test_a_region_without_a_clear_lead_keeps_the_whole_images_choice():
    from deepprior.fitting import region_choices

    problem, fit, start = _two_halves(1)
    same = region_choices(problem, fit, fit.clone(), (0.0, 0.5, 1.0), chosen=1.0, region=32)
    assert (same == 1.0).all()  # no candidate differs from the fit, so none leads it
    problem.hold_out((np.arange(64)[:, None] < 60) & (np.arange(128)[None, :] < 4))  # 240 pixels, all on the left
    grid = region_choices(problem, start, fit, (0.0, 0.5, 1.0), chosen=1.0, region=64)
    assert grid.tolist() == [[1.0, 1.0]]  # the start is better on the left, but 240 pixels are too few to say so


def test_a_large_denoising_reports_its_shares_region_by_region(house):
    image = Image(np.ascontiguousarray(house[:64, :128]))
    r = restore(image, Denoise(sigma=25), seed=1, threads=1, max_fit_pixels=1000, net=SMALL_NET, input_depth=5,
                crop_iterations=3, crop_size=32, crop_batch=2, holdout=0.2)
    returned = r.report()["returned"]
    assert returned["region_size"] == 512 and np.array(returned["region_shares"]).shape == (1, 1)
    assert "region by region" in returned["why"]


def test_the_work_of_a_drawn_fit_counts_the_drawn_pixels_and_a_share_of_the_result():
    from deepprior.restoration import DRAWN_PIXEL_COST, planned_work

    hole = get_preset("hole", "fast")
    big = 12_000_000
    assert planned_work(hole, big, "whole") == (hole.draw_pixels + DRAWN_PIXEL_COST * big) * hole.iterations
    assert planned_work(hole, 10_000, "whole") == 10_000 * hole.iterations  # drawn at its own size
    assert planned_work(replace(hole, draw_pixels=0), big, "whole") == big * hole.iterations
    assert planned_work(hole, big, "window") == planned_work(hole, hole.work_pixels, "whole")  # at most the work size
    assert planned_work(hole, big, "window", windows=3) == 3 * planned_work(hole, big, "window")  # one fit a window
