"""Every task end to end through the Python API, on tiny crops of a real photo."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from deepprior import DeepPriorError, Image, estimates, fitting, load_image, restore, tasks
from deepprior.degrade import add_noise, downscale, random_mask
from deepprior.fitting import BLEND_WEIGHTS
from deepprior.metrics import psnr

FEW = dict(iterations=30, stop="off")


def loss_fell(result):
    losses = [h["loss"] for h in result.history]
    return np.mean(losses[-3:]) < losses[0]


def test_denoise_keeps_shape_and_loss_falls(rgb32):
    r = restore(rgb32, tasks.Denoise(), **FEW)
    assert r.image.pixels.shape == rgb32.shape
    assert r.image.pixels.dtype == np.float32
    assert 0 <= r.image.pixels.min() and r.image.pixels.max() <= 1
    assert loss_fell(r)
    assert r.iterations == 30 and r.outcome.stop_reason == "completed"


def test_same_seed_reproduces_other_seed_differs(rgb32):
    # The fit itself (a fit this short would lose the choice against its start, which has no seed).
    a = restore(rgb32, tasks.Denoise(), iterations=8, stop="off", seed=3, select_start=False)
    b = restore(rgb32, tasks.Denoise(), iterations=8, stop="off", seed=3, select_start=False)
    c = restore(rgb32, tasks.Denoise(), iterations=8, stop="off", seed=4, select_start=False)
    np.testing.assert_array_equal(a.image.pixels, b.image.pixels)
    assert not np.array_equal(a.image.pixels, c.image.pixels)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_upscale_multiplies_the_size(rgb32, scale):
    lo = rgb32[: 32 // scale * 2 if scale > 4 else 16, :12]
    r = restore(lo, tasks.SuperResolution(scale=scale), iterations=4, stop="off")
    assert r.image.pixels.shape == (lo.shape[0] * scale, lo.shape[1] * scale, 3)


def test_upscale_loss_falls_and_reports_y_psnr(rgb32):
    hr = Image(rgb32)
    lr = downscale(hr, 2)
    r = restore(lr, tasks.SuperResolution(scale=2), reference=hr.pixels, **FEW)
    assert loss_fell(r)
    assert {"psnr", "ssim", "psnr_y", "ssim_y"} <= set(r.metrics)
    assert all("psnr" in h for h in r.history)


def test_inpaint_keeps_known_pixels_and_fills_the_rest(rgb32):
    fill = np.zeros(rgb32.shape[:2], bool)
    fill[10:20, 8:24] = True
    damaged = rgb32.copy()
    damaged[fill] = 0
    r = restore(damaged, tasks.Inpaint(mask=fill), **FEW)
    np.testing.assert_array_equal(r.image.pixels[~fill], damaged[~fill])
    assert r.image.pixels[fill].mean() > 0.05  # something was painted in
    raw = restore(damaged, tasks.Inpaint(mask=fill, keep_known=False), **FEW)
    assert not np.array_equal(raw.image.pixels[~fill], damaged[~fill])


def test_hole_mode_draws_from_noise_and_the_paper_preset_from_the_meshgrid(rgb32):
    fill = np.zeros(rgb32.shape[:2], bool)
    fill[8:24, 8:24] = True
    r = restore(rgb32, tasks.Inpaint(mask=fill, mode="hole"), iterations=5)
    assert r.params["fit"]["input"] == "noise" and r.params["fit"]["draw_pixels"] > 0
    assert r.image.pixels.shape == rgb32.shape and r.report()["returned"]["result"] == "blend"
    fit = restore(rgb32, tasks.Inpaint(mask=fill, mode="hole"), "paper", iterations=2).params["fit"]
    assert fit["input"] == "meshgrid" and fit["net"]["kind"] == "hourglass" and fit["net"]["upsample"] == "nearest"


def test_the_fast_hole_preset_returns_the_even_mean_of_its_fit_and_the_fills(rgb32):
    from deepprior import estimates
    from deepprior.degrade import hole_mask

    fill = hole_mask((32, 32), seed=1)
    damaged = np.where(fill[:, :, None], 0.0, rgb32).astype(np.float32)
    start, low, high = estimates.fills_mean_and_range(damaged, fill, tasks.START_FILLS["hole"][0],
                                                      tasks.START_LEAD["hole"])
    r = restore(damaged, tasks.Inpaint(mask=fill, mode="hole"), iterations=5, seed=3)
    o = r.outcome
    assert (o.iterations, o.returned, o.fit_weight, o.fixed_share) == (5, "blend", 0.5, True) and o.parameters > 0
    np.testing.assert_array_equal(r.image.pixels[~fill], damaged[~fill])
    fitted = 2 * r.image.pixels[fill] - start[fill]  # the fit's own values inside the hole
    # ... clipped into the range of the six fills, and not the start itself.
    assert (fitted >= low[fill] - 1e-5).all() and (fitted <= high[fill] + 1e-5).all()
    assert np.abs(fitted - start[fill]).mean() > 0.005
    unbounded = restore(damaged, tasks.Inpaint(mask=fill, mode="hole"), iterations=5, seed=3, bound_fit=False)
    free = 2 * unbounded.image.pixels[fill] - start[fill]
    assert ((free < low[fill] - 1e-3) | (free > high[fill] + 1e-3)).any()  # the clip had work to do
    again = restore(damaged, tasks.Inpaint(mask=fill, mode="hole"), iterations=5, seed=3)
    np.testing.assert_array_equal(again.image.pixels, r.image.pixels)  # reproducible by seed
    assert r.report()["params"]["start"]["fills"] == list(tasks.START_FILLS["hole"][0])
    assert r.report()["params"]["start"]["lead"] == "fsrhalf"


def test_a_hole_is_filled_from_a_window_around_it_reduced_above_the_work_size(house):
    image = np.ascontiguousarray(house[:64, :96])
    fill = np.zeros((64, 96), bool)
    fill[20:36, 50:74] = True
    damaged = np.where(fill[:, :, None], 0.0, image).astype(np.float32)
    task = tasks.Inpaint(mask=fill, mode="hole")
    # Three times the hole's extent on each axis (or the work size's side), centred on it, within the image.
    assert task.window(Image(damaged), 16 * 16) == (4, 24, 48, 72)
    assert task.window(Image(damaged), 100 * 100) == (0, 0, 64, 96)
    with pytest.raises(DeepPriorError, match="no pixel to fill"):
        tasks.Inpaint(mask=np.zeros((64, 96), bool), mode="hole").window(Image(damaged), 256)
    with pytest.raises(DeepPriorError, match="mask is 96x64 but the image is 48x32"):
        task.window(Image(np.ascontiguousarray(damaged[:32, :48])), 256)

    previews = []
    r = restore(damaged, task, iterations=5, seed=1, work_pixels=24 * 24, reference=image, callback_every=5,
                callback=lambda p: previews.append(p.preview()) if p.stage == "fit" else None)
    assert previews[-1].shape == image.shape  # the window's result shown in place in the whole image
    np.testing.assert_array_equal(previews[-1][:4], damaged[:4])  # outside the window: the input
    t = r.report()["tiling"]
    assert t["method"] == "window" and t["window"] == [4, 24, 48, 72] and t["size"] == [20, 29]
    assert r.image.pixels.shape == image.shape
    np.testing.assert_array_equal(r.image.pixels[~fill], damaged[~fill])  # known pixels kept exactly
    assert np.isfinite(r.image.pixels).all() and r.image.pixels[fill].mean() > 0.05
    assert r.metrics["psnr"] == pytest.approx(psnr(r.image.pixels, image))  # scored at full size
    again = restore(damaged, task, iterations=5, seed=1, work_pixels=24 * 24)
    np.testing.assert_array_equal(again.image.pixels, r.image.pixels)  # reproducible by seed
    # Up to the work size the image is filled whole, as before; a task that cannot be reduced says so.
    assert restore(damaged, task, iterations=2).report()["tiling"]["method"] == "whole"
    with pytest.raises(DeepPriorError, match="cannot be restored at a reduced size"):
        restore(damaged, tasks.Denoise(), iterations=2, work_pixels=24 * 24)


def test_holes_far_apart_are_filled_each_from_its_own_window(house):
    image = np.ascontiguousarray(house[:64, :96])
    fill = np.zeros((64, 96), bool)
    fill[2:6, 2:6] = fill[56:60, 88:92] = True
    damaged = np.where(fill[:, :, None], 0.0, image).astype(np.float32)
    task = tasks.Inpaint(mask=fill, mode="hole")
    assert task.windows(Image(damaged), 16 * 16) == [(0, 0, 16, 16), (48, 80, 16, 16)]
    near = np.zeros((64, 96), bool)
    near[2:6, 2:6] = near[2:6, 12:16] = True  # their windows overlap: one window around both
    assert tasks.Inpaint(mask=near, mode="hole").windows(Image(damaged), 16 * 16) == [(0, 0, 16, 42)]

    seen = set()
    r = restore(damaged, task, iterations=4, seed=2, work_pixels=16 * 16, reference=image,
                callback=lambda p: seen.add((p.tile, p.tiles)), callback_every=2)
    t = r.report()["tiling"]
    assert t["method"] == "windows" and t["tiles"] == 2 and t["windows"] == [[0, 0, 16, 16], [48, 80, 16, 16]]
    assert seen == {(1, 2), (2, 2)} and r.outcome.iterations == 8
    np.testing.assert_array_equal(r.image.pixels[~fill], damaged[~fill])
    assert (r.image.pixels[fill] > 0.05).all()  # both holes filled
    assert r.metrics["psnr"] == pytest.approx(psnr(r.image.pixels, image))
    again = restore(damaged, task, iterations=4, seed=2, work_pixels=16 * 16)
    np.testing.assert_array_equal(again.image.pixels, r.image.pixels)
    with pytest.raises(DeepPriorError, match="reference is 48x32 but the result will be 96x64"):  # before any fit
        restore(damaged, task, iterations=4, work_pixels=16 * 16, reference=image[:32, :48])
    # A stop asked during the first window leaves the second to its classical start.
    stopped = restore(damaged, task, iterations=4, seed=2, work_pixels=16 * 16, callback_every=1,
                      callback=lambda p: p.stage == "fit")
    assert stopped.outcome.stop_reason == "callback" and (stopped.image.pixels[fill] > 0.05).all()


def test_a_hole_with_0_iterations_returns_its_classical_start_and_says_so(rgb32):
    from deepprior import estimates
    from deepprior.degrade import hole_mask

    fill = hole_mask((32, 32), seed=1)
    damaged = np.where(fill[:, :, None], 0.0, rgb32).astype(np.float32)
    seen = []
    r = restore(damaged, tasks.Inpaint(mask=fill, mode="hole"), iterations=0, callback=seen.append)
    o = r.outcome
    assert (o.iterations, o.returned, o.fit_weight, o.parameters) == (0, "start", 0.0, 0)
    expected = estimates.fills_mean_and_range(damaged, fill, tasks.START_FILLS["hole"][0], tasks.START_LEAD["hole"])[0]
    np.testing.assert_allclose(r.image.pixels, expected, atol=1e-6)
    assert "0 iterations" in r.report()["returned"]["why"] and r.report()["tiling"]["method"] == "whole"
    assert seen and {p.stage for p in seen} == {"start"}  # the start's progress reaches the caller
    # Above the fit-whole size the start is still made whole, not tile by tile.
    big = restore(damaged, tasks.Inpaint(mask=fill, mode="hole"), iterations=0, max_fit_pixels=256)
    assert big.report()["tiling"]["method"] == "whole"
    np.testing.assert_allclose(big.image.pixels, expected, atol=1e-6)


def test_reconstruct_grayscale_stays_grayscale(rgb32):
    gray = rgb32.mean(axis=2, keepdims=True)
    fill = random_mask(gray.shape[:2], 0.5, seed=0)
    r = restore(gray * ~fill[:, :, None], tasks.Reconstruct(mask=fill), **FEW)
    assert r.image.pixels.shape == gray.shape and r.image.mode == "L"
    assert loss_fell(r)


def test_dejpeg_and_deblur(rgb32):
    assert restore(rgb32, tasks.DeJPEG(), iterations=4).image.pixels.shape == rgb32.shape
    r = restore(rgb32, tasks.Deblur.from_spec("gaussian:1.5"), **FEW)
    assert r.image.pixels.shape == rgb32.shape and loss_fell(r)
    assert r.params["task"]["kernel"] == "gaussian:1.5"


def test_flash_uses_the_flash_image_as_input(rgb32):
    flash = Image(np.clip(rgb32 * 1.3, 0, 1))
    r = restore(rgb32, tasks.FlashNoFlash(flash=flash), iterations=10)
    assert r.params["fit"]["input"] == "image" and r.image.pixels.shape == rgb32.shape
    with pytest.raises(DeepPriorError, match="flash image is"):
        restore(rgb32[:20], tasks.FlashNoFlash(flash=flash), iterations=2)


def test_alpha_is_carried_through_untouched(rgb32):
    alpha = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    r = restore(Image(rgb32, alpha=alpha), tasks.Denoise(), iterations=3)
    assert r.image.mode == "RGBA"
    np.testing.assert_array_equal(r.image.alpha, alpha)


def test_odd_and_tiny_sizes_work():
    for h, w in [(1, 1), (3, 5), (37, 11)]:
        img = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)
        assert restore(img, tasks.Denoise(), iterations=2).image.pixels.shape == (h, w, 3)
    r = restore(np.full((1, 1, 3), 0.5, np.float32), tasks.SuperResolution(scale=8), iterations=2)
    assert r.image.pixels.shape == (8, 8, 3)


def test_callback_sees_progress_and_can_stop(rgb32):
    seen = []

    def cb(p):
        if p.stage == "fit":
            seen.append((p.iteration, p.loss, p.preview().shape))
        return p.iteration >= 10

    r = restore(rgb32, tasks.Denoise(), iterations=100, stop="off", callback=cb, callback_every=5)
    assert [s[0] for s in seen] == [5, 10]
    assert seen[0][2] == rgb32.shape
    assert r.outcome.stop_reason == "callback" and r.iterations == 10


def test_callback_hears_while_the_start_is_made(rgb32):
    """A classical start can take minutes: the callback is told when it is made, before the first
    iteration and again (from every pixel) after the last when the choice returns it."""
    img = np.ascontiguousarray(np.tile(rgb32, (2, 2, 1)))  # 64x64: pixels to spare for a hold-out
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 0.1, img.shape), 0, 1).astype(np.float32)
    seen = []

    def cb(p):
        seen.append(p)
        return True  # asked to stop: ignored while the start is made, honoured at the first iteration after

    # Non-local means: a start quick enough to report once (BM3D, where installed, reports each second).
    r = restore(noisy, tasks.Denoise(sigma=25, start="nlm"), iterations=40, lr=50.0, select_start=True, stop="off",
                seed=3, threads=1, callback=cb, callback_every=5)
    assert [p.stage for p in seen] == ["start", "fit", "restart"]
    assert seen[1].iteration == 5 and r.outcome.stop_reason == "callback"
    for p in (seen[0], seen[2]):
        assert p.preview() is None and math.isnan(p.loss)
    assert math.isnan(seen[0].eta_s) and 0 < seen[2].eta_s < 60  # made again: as long as the first time
    assert seen[0].iteration == 0 and seen[2].iteration == 5
    assert r.outcome.returned == "start"
    plain = []
    restore(noisy, tasks.Denoise(sigma=25), input="noise", iterations=5, stop="off", callback=plain.append,
            callback_every=5)
    assert [p.stage for p in plain] == ["fit"]  # no start to make


def test_the_start_reports_its_remaining_time(rgb32, monkeypatch):
    """While a slow start is made the callback hears, before the first iteration, how long it
    has taken and about how long it has left (from how far the estimate says it is)."""
    monkeypatch.setattr(fitting, "START_REPORT_EVERY_S", 0.0)  # every report the estimate makes
    seen = []
    restore(rgb32[:16, :16], tasks.SuperResolution(scale=2), iterations=5, stop="off", threads=1,
            callback=seen.append, callback_every=5)
    starts = [p for p in seen if p.stage == "start"]
    assert seen[len(starts)].stage == "fit" and len(starts) >= 3  # all of them before the first iteration
    assert math.isnan(starts[0].eta_s)  # announced before anything is known
    assert all(math.isfinite(p.eta_s) and p.eta_s >= 0 for p in starts[1:])
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(starts, starts[1:]))
    assert starts[-1].eta_s < starts[1].eta_s + 1e-9


def test_report_has_the_documented_keys(rgb32):
    r = restore(rgb32, tasks.Denoise(), reference=rgb32, iterations=10)
    rep = r.report()
    for key in ["task", "preset", "params", "iterations", "elapsed_s", "seconds_per_iter", "history", "metrics",
                "output", "version", "device", "stopped_at"]:
        assert key in rep
    assert rep["history"][0]["iter"] == 1 and "psnr" in rep["history"][0]


def test_zero_iterations_return_the_classical_start_alone(rgb32):
    """Asked for 0 iterations, a preset that starts from an estimate returns that estimate made
    from every pixel, no network fitted, and says so; a preset that starts from noise has no
    start to return and says that instead."""
    noisy = np.clip(rgb32 + np.random.default_rng(0).normal(0, 25 / 255, rgb32.shape), 0, 1).astype(np.float32)
    task = tasks.Denoise(sigma=25, start="nlm")
    r = restore(noisy, task, iterations=0)
    np.testing.assert_array_equal(r.image.pixels, np.clip(estimates.nlm_denoise(noisy, 25), 0, 1))
    assert r.iterations == 0 and r.outcome.returned == "start" and r.outcome.parameters == 0
    assert r.report()["returned"] == {"result": "start", "fit_weight": 0.0,
                                      "why": "0 iterations were asked for"}
    with pytest.raises(DeepPriorError, match="classical start alone"):
        restore(noisy, tasks.Denoise(), preset="paper", iterations=0)


def test_bad_options_are_clear_errors(rgb32):
    with pytest.raises(DeepPriorError):
        tasks.SuperResolution(scale=5)
    with pytest.raises(DeepPriorError):
        tasks.Denoise(sigma=-1)
    with pytest.raises(DeepPriorError):
        restore(rgb32, tasks.Denoise(), iterations=-1)
    with pytest.raises(DeepPriorError):
        restore(rgb32, tasks.Denoise(), preset="slow")
    with pytest.raises(DeepPriorError):
        restore(rgb32, tasks.Denoise(), stop="sometimes")
    with pytest.raises(DeepPriorError, match="draw_pixels"):  # a refined estimate cannot be drawn coarsely
        restore(rgb32, tasks.Denoise(), iterations=3, draw_pixels=256)
    with pytest.raises(DeepPriorError, match="no known pixel"):
        tasks.load_mask(np.ones((4, 4), bool), size=(4, 4))
    with pytest.raises(DeepPriorError, match="no pixel to fill"):
        tasks.load_mask(np.zeros((4, 4), bool), size=(4, 4))
    with pytest.raises(DeepPriorError, match="mask is"):
        tasks.load_mask(np.zeros((4, 5), bool), size=(4, 4))


def test_mask_known_flips_the_convention():
    white = np.zeros((4, 4), bool)
    white[0] = True
    assert tasks.load_mask(white, size=(4, 4)).sum() == 4
    assert tasks.load_mask(white, size=(4, 4), fill_is_white=False).sum() == 12


def test_denoising_a_real_photo_gains_4_db_with_the_default_preset(house):
    """The issue's quality check: 96x96 House crop, sigma 25 (seeded), default preset."""
    clean = Image(np.ascontiguousarray(house[80:176, 80:176]))
    noisy = add_noise(clean, 25, seed=0)
    before = psnr(noisy.pixels, clean.pixels)
    result = restore(noisy, tasks.Denoise())
    after = psnr(result.image.pixels, clean.pixels)
    assert after >= before + 4.0, (before, after, result.stopped_at)


def test_bayes_mode_gives_a_mean_and_an_uncertainty_map_of_the_image_size(rgb32):
    a = restore(rgb32, tasks.Denoise(), bayes=True, iterations=40, sample_every=4)
    b = restore(rgb32, tasks.Denoise(), bayes=True, iterations=40, sample_every=4)
    # burn-in of half the iterations, then every 2nd: sample_every=4 is tightened so that even a
    # short run averages about 10 samples
    assert a.outcome.samples == 10
    assert a.uncertainty.shape == rgb32.shape[:2] and (a.uncertainty >= 0).all() and a.uncertainty.max() > 0
    assert a.image.pixels.shape == rgb32.shape
    np.testing.assert_array_equal(a.image.pixels, b.image.pixels)  # reproducible by seed
    np.testing.assert_array_equal(a.uncertainty, b.uncertainty)
    assert a.report()["bayes"]["samples"] == 10
    assert a.outcome.stop_reason == "completed"  # no early stopping in Bayesian mode


def test_auto_stop_returns_the_iterate_at_the_variance_minimum(rgb32):
    r = restore(rgb32, tasks.Denoise(), iterations=400, stop_rule="variance", stop_window=20, stop_patience=40,
                stop_start=0)
    rep = r.report()
    curve = rep["stop_curve"]
    best_iter = min(curve, key=lambda c: c[1])[0]
    assert r.stopped_at == best_iter
    assert r.outcome.stop_reason == "auto"
    assert r.iterations == best_iter + 40
    assert curve[0][0] == 20  # nothing before the window fills


def test_the_rule_takes_no_minimum_before_stop_start(rgb32):
    r = restore(rgb32, tasks.Denoise(), iterations=300, stop_rule="variance", stop_window=20, stop_patience=40,
                stop_start=150)
    curve = r.report()["stop_curve"]
    assert curve[0][0] == 20  # the variance is still tracked from the moment the window fills
    assert r.stopped_at >= 150
    # The rule takes a minimum past the floor only if it is lower than everything before it;
    # when there is none the fit runs to its cap and returns its last (averaged) output.
    late = min((c for c in curve if c[0] >= 150), key=lambda c: c[1])
    early = min(c[1] for c in curve if c[0] < 150)
    assert r.stopped_at == (late[0] if late[1] < early else 300)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_a_rule_that_never_fires_returns_what_stop_off_returns(rgb32, ema):
    # An unconfirmed variance minimum is not the result: the fit's latest averaged output (or,
    # without averaging, its lowest-loss output) is, exactly as without the rule.
    ov = {"stop_rule": "variance", "stop_window": 20, "stop_patience": 10**6, "stop_start": 0, "ema": ema}
    auto = restore(rgb32, tasks.Denoise(), iterations=120, **ov)
    off = restore(rgb32, tasks.Denoise(), iterations=120, stop="off", **ov)
    assert auto.outcome.stop_reason == "completed" and auto.outcome.auto_stop_at is None
    assert len(auto.outcome.stop_curve) == 101  # the rule did run
    np.testing.assert_array_equal(auto.image.pixels, off.image.pixels)


def test_observe_mode_runs_on_but_returns_the_rule_s_choice(rgb32):
    ov = {"stop_rule": "variance", "stop_window": 20, "stop_patience": 30, "stop_start": 0}
    auto = restore(rgb32, tasks.Denoise(), iterations=300, **ov)
    seen = restore(rgb32, tasks.Denoise(), iterations=300, stop="observe", **ov)
    assert seen.iterations == 300
    assert auto.outcome.stop_reason == "auto"
    assert seen.outcome.auto_stop_at == auto.iterations
    assert seen.stopped_at == auto.stopped_at
    np.testing.assert_array_equal(seen.image.pixels, auto.image.pixels)


def test_random_projector_mode_fits_only_the_input_and_batchnorm(rgb32):
    """freeze_convolutions (Deep Random Projector) leaves every convolution at its random start."""
    import torch

    from deepprior.fitting import fit
    from deepprior.presets import get_preset
    from dataclasses import replace

    problem = tasks.Denoise().problem(Image(rgb32))
    cfg = replace(get_preset("denoise", "fast"), freeze_convolutions=True, optimize_input=True, input_lr=0.1,
                  tv_weight=0.01, iterations=20, stop="off", reg_noise_std=0.0)
    seen = {}
    real_adam = torch.optim.Adam

    def spy(groups, **kw):
        seen["groups"] = groups
        return real_adam(groups, **kw)

    torch.optim.Adam, saved = spy, torch.optim.Adam
    try:
        out = fit(problem, cfg, seed=0)
    finally:
        torch.optim.Adam = saved
    net_params, z = seen["groups"]
    from deepprior.networks import build_network

    net = build_network(cfg.net, cfg.input_depth, 3)
    bn = sum(p.numel() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert sum(p.numel() for p in net_params["params"]) == bn  # BatchNorm weights and biases only
    assert z["lr"] == 0.1 and z["params"][0].dim() == 4
    assert out.history[-1]["loss"] < out.history[0]["loss"]


def test_held_out_pixels_leave_the_data_term_and_the_estimate(rgb32):
    # The held-out pixels' values must reach neither the fit nor its classical start: changing them
    # changes nothing but the held-out loss.
    held = np.zeros(rgb32.shape[:2], dtype=bool)
    held[::7, ::5] = True
    other = rgb32.copy()
    other[held] = 1.0 - other[held]
    for task in (tasks.Denoise(sigma=25), tasks.Reconstruct(mask=random_mask(held.shape, 0.5, 1) & ~held)):
        a, b = task.problem(Image(rgb32)), task.problem(Image(other))
        a.hold_out(held)
        b.hold_out(held)
        np.testing.assert_array_equal(a.estimate(), b.estimate())
        x = torch.rand(1, 3, *held.shape)
        assert float(a.loss(x)) == pytest.approx(float(b.loss(x)))
        assert float(a.held_out_loss(x)) != pytest.approx(float(b.held_out_loss(x)))


def test_inpainting_holds_out_known_pixels_near_the_mask_only():
    from deepprior.degrade import text_mask
    from deepprior.fitting import hold_out_pixels
    from deepprior.presets import get_preset
    from scipy.ndimage import distance_transform_cdt

    fill = text_mask((96, 96), "dip", seed=0)
    near = tasks.near_mask(fill)
    assert not (near & fill).any() and near.any()
    far = ~near & ~fill
    assert far.any()  # the test's mask leaves known pixels out of reach
    distance = distance_transform_cdt(~fill, metric="chessboard")
    assert distance[near].max() <= tasks.HOLDOUT_REACH and distance[far].min() > tasks.HOLDOUT_REACH
    problem = tasks.Inpaint(mask=fill).problem(Image(np.random.default_rng(0).random((96, 96, 3), np.float32)))
    assert hold_out_pixels(problem, get_preset("inpaint", "fast"), seed=0)
    held = problem.held[0, 0].numpy() > 0
    assert held.any() and not (held & ~near).any()


def test_a_hole_is_checked_on_a_copy_of_it_elsewhere_held_out_whole():
    from deepprior.degrade import hole_mask
    from deepprior.estimates import probe_mask
    from deepprior.fitting import hold_out_pixels
    from deepprior.presets import get_preset

    fill = hole_mask((128, 128), seed=0)
    probe = probe_mask(fill)
    assert not (probe & fill).any() and probe.sum() > 0.5 * fill.sum()
    problem = tasks.Inpaint(mask=fill, mode="hole").problem(Image(np.random.default_rng(0).random((128, 128, 3),
                                                                                                  np.float32)))
    assert hold_out_pixels(problem, replace(get_preset("hole", "fast"), select_start=True), seed=0)
    held = problem.held[0, 0].numpy() > 0
    assert not (held & ~probe).any() and held.sum() >= 0.98 * probe.sum()  # nearly all of the copy


def test_holdout_rule_returns_the_result_at_its_lowest_held_out_loss(rgb32):
    noisy = add_noise(Image(rgb32), 25, 0)
    ov = dict(iterations=300, stop_rule="holdout", holdout=0.1, stop_patience=40, stop_start=0)
    r = restore(noisy, tasks.Denoise(sigma=25), **ov)
    curve = r.outcome.stop_curve
    best = min(curve, key=lambda c: c[1])[0]
    assert curve[0][0] == 1  # no window: the held-out loss is watched from the first iteration
    if r.outcome.stop_reason == "auto":
        assert r.stopped_at == best and r.iterations == best + 40
    else:  # the loss was still falling at the cap
        assert best > 300 - 40 and r.iterations == 300
    again = restore(noisy, tasks.Denoise(sigma=25), **ov)
    np.testing.assert_array_equal(r.image.pixels, again.image.pixels)  # reproducible by seed


def test_holdout_on_a_tiny_image_falls_back_to_the_variance_rule():
    tiny = np.full((8, 8, 3), 0.5, dtype=np.float32)
    r = restore(tiny, tasks.Denoise(), iterations=30, stop_rule="holdout", stop_window=5, stop_patience=100)
    assert r.image.pixels.shape == (8, 8, 3)
    assert r.outcome.stop_curve[0][0] == 5  # the variance rule's curve: it starts once its window fills


def test_averaging_warm_up_lets_the_first_outputs_go():
    from deepprior.fitting import ema_decay

    assert ema_decay(0.99, 0, 3) == 0.99 and ema_decay(0.99, 10, 5000) == 0.99
    assert ema_decay(0.99, 10, 1) == pytest.approx(2 / 11)
    plain = warm = 1.0  # the weight left on iteration 1's output after 100 iterations
    for t in range(2, 101):
        plain *= ema_decay(0.99, 0, t)
        warm *= ema_decay(0.99, 10, t)
    assert plain > 0.3 and warm < 1e-6


def test_with_the_warm_up_the_result_leaves_the_random_first_output(rgb32):
    def run(warmup):
        first = []

        def keep_first(p):
            if p.iteration == 1:
                first.append(p.preview())

        r = restore(rgb32, tasks.Denoise(), input="noise", ema=0.99, ema_warmup=warmup, iterations=30, stop="off",
                    callback=keep_first, callback_every=1)
        return np.abs(r.image.pixels - np.clip(first[0], 0, 1)).mean()

    # At a plain 0.99 the first output still weighs 0.99 ** 29 = 75 % of the average after 30 iterations.
    assert run(10) > 2 * run(0)


def test_a_failing_fit_returns_its_start_not_something_worse(rgb32):
    """A learning rate that wrecks the fit: choosing by the held-out pixels returns the classical
    start (the same image every run of the seed), and the report says so."""
    img = np.ascontiguousarray(np.tile(rgb32, (2, 2, 1)))  # 64x64: pixels to spare for a hold-out
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 0.1, img.shape), 0, 1).astype(np.float32)
    task = tasks.Denoise(sigma=25)
    runs = [restore(noisy, task, iterations=40, lr=50.0, select_start=True, stop="off", seed=3, threads=1)
            for _ in range(2)]
    r = runs[0]
    assert r.outcome.returned == "start" and r.outcome.fit_weight == 0.0
    errors = r.outcome.held_out_errors
    assert errors[0.0] == min(errors.values()) and errors[max(errors)] > errors[0.0]
    assert r.report()["returned"]["result"] == "start"
    # The held-out pixels ranked the candidates; the start returned is made from every pixel.
    np.testing.assert_allclose(r.image.pixels, task.problem(Image(noisy)).estimate(), atol=1e-6)
    assert np.array_equal(runs[0].image.pixels, runs[1].image.pixels)
    plain = restore(noisy, task, iterations=40, lr=50.0, select_start=False, stop="off", seed=3, threads=1)
    assert plain.outcome.returned == "fit" and plain.outcome.held_out_errors is None
    assert psnr(r.image.pixels, img) > psnr(plain.image.pixels, img) + 3


def test_an_upscale_returns_the_tasks_share_of_the_fit_and_its_start(rgb32):
    """Super-resolution returns a fixed blend of the fit and its start, the task's share for that
    start (tasks.SR_FIT_SHARES); the report names the blend and why. Same seed, same result."""
    lr = downscale(Image(rgb32), 2).pixels
    task = tasks.SuperResolution(scale=2)
    runs = [restore(lr, task, iterations=6, stop="off", seed=2, threads=1) for _ in range(2)]
    fit = restore(lr, task, iterations=6, stop="off", seed=2, threads=1, fit_share=1.0)
    problem = task.problem(Image(lr))
    start, w = problem.estimate(), problem.fit_share
    assert w == {"bm3d": 0.1, "regularised": 0.5}[problem.estimate_name]
    o = runs[0].outcome
    assert o.returned == "blend" and o.fit_weight == w and o.fixed_share and o.held_out_errors is None
    np.testing.assert_allclose(runs[0].image.pixels, np.clip(w * fit.image.pixels + (1 - w) * start, 0, 1), atol=1e-6)
    assert np.array_equal(runs[0].image.pixels, runs[1].image.pixels)
    assert fit.outcome.returned == "fit" and not fit.outcome.fixed_share
    returned = runs[0].report()["returned"]
    assert returned["result"] == "blend" and returned["fit_weight"] == w and "fixed share" in returned["why"]
    assert "why" not in fit.report()["returned"]


def test_reconstruction_is_chosen_against_its_start_on_held_out_known_pixels(rgb32):
    img = np.ascontiguousarray(np.tile(rgb32, (2, 2, 1)))  # 64x64: pixels to spare for a hold-out
    fill = random_mask(img.shape[:2], 0.5, seed=4)
    damaged = img * ~fill[:, :, None]
    task = tasks.Reconstruct(mask=fill)
    r = restore(damaged, task, iterations=20, lr=50.0, seed=0, threads=1)
    o = r.outcome
    assert o.returned == "start"
    assert set(o.held_out_errors) == set(task.problem(Image(damaged)).blend_weights or BLEND_WEIGHTS)
    held = r.report()["returned"]
    assert held["result"] == "start" and held["why"] == "least error on the held-out pixels"
    # The start returned is the one made from every known pixel; the known pixels are kept.
    np.testing.assert_allclose(r.image.pixels, task.problem(Image(damaged)).estimate(), atol=1e-6)
    np.testing.assert_array_equal(r.image.pixels[~fill], damaged[~fill])


def test_a_good_fit_is_kept_or_blended_by_the_held_out_check(rgb32):
    img = np.ascontiguousarray(np.tile(rgb32, (2, 2, 1)))
    noisy = np.clip(img + np.random.default_rng(1).normal(0, 0.1, img.shape), 0, 1).astype(np.float32)
    r = restore(noisy, tasks.Denoise(sigma=25), iterations=60, select_start=True, stop="off", seed=0, threads=1)
    o = r.outcome
    assert o.returned in ("fit", "blend", "start")
    assert o.held_out_errors[o.fit_weight] == min(o.held_out_errors.values())


@pytest.mark.parametrize("mode", ["text", "hole"])
def test_a_tiny_text_or_hole_is_filled_and_the_known_pixels_kept_exactly(rgb32, mode):
    from deepprior.degrade import hole_mask, text_mask

    fill = text_mask((32, 32), "dip", seed=1) if mode == "text" else hole_mask((32, 32), seed=1)
    damaged = rgb32.copy()
    damaged[fill] = 1.0
    r = restore(damaged, tasks.Inpaint(mask=fill, mode=mode), **FEW)
    np.testing.assert_array_equal(r.image.pixels[~fill], damaged[~fill])
    assert np.abs(r.image.pixels[fill] - 1.0).mean() > 0.05  # the white marks were painted over
    assert tuple(r.report()["params"]["start"]["fills"]) in tasks.START_FILLS[mode]  # the report names the start


def test_denoising_starts_from_bm3d_where_installed_else_non_local_means(rgb32, monkeypatch):
    from deepprior import estimates

    noisy = np.clip(rgb32 + np.random.default_rng(2).normal(0, 0.1, rgb32.shape), 0, 1).astype(np.float32)
    monkeypatch.setattr(estimates, "bm3d_available", lambda: False)
    r = restore(noisy, tasks.Denoise(sigma=25), iterations=5, stop="off", threads=1)
    assert r.report()["params"]["start"] == {"estimate": "nlm"}
    assert set(r.outcome.held_out_errors) == {0.0, 0.5, 1.0}  # the fit, the start or their even mean
    assert r.report()["params"]["task"]["start"] == "auto"
    with pytest.raises(DeepPriorError, match="bm3d package"):
        tasks.Denoise(sigma=25, start="bm3d")
    with pytest.raises(DeepPriorError, match="denoising start"):
        tasks.Denoise(start="wavelets")
    # A fit from noise has no classical start to name.
    assert "start" not in restore(noisy, tasks.Denoise(), input="noise", iterations=3).report()["params"]


def test_the_bm3d_start_is_bm3d_and_large_images_take_non_local_means(rgb32, monkeypatch):
    pytest.importorskip("bm3d")
    from deepprior import estimates

    noisy = np.clip(rgb32 + np.random.default_rng(2).normal(0, 0.1, rgb32.shape), 0, 1).astype(np.float32)
    task = tasks.Denoise(sigma=25)
    problem = task.problem(Image(noisy))
    assert problem.estimate_name == "bm3d" and problem.blend_weights == (0.0, 0.5)
    assert tasks.Denoise(sigma=15).problem(Image(noisy)).blend_weights == (0.0, 0.25)  # less of the fit at low noise
    assert tasks.Denoise().problem(Image(noisy)).blend_weights == (0.0, 0.5)  # blind: the noise read from the image
    r = restore(noisy, task, iterations=5, stop="off", threads=1)
    assert set(r.outcome.held_out_errors) == {0.0, 0.5}
    np.testing.assert_array_equal(problem.estimate(), estimates.bm3d_denoise(noisy, 25))
    monkeypatch.setattr(tasks, "LARGE_START_PIXELS", 32 * 32 - 1)
    assert task.denoiser(32, 32) == "nlm" and tasks.Denoise(start="bm3d").denoiser(32, 32) == "bm3d"
    assert tasks.Denoise(start="bm3d").denoiser(8, 300) == "nlm"  # too small for the bm3d package
    assert restore(noisy[:8, :8], tasks.Denoise(start="bm3d"), iterations=2).report()["params"]["start"]["estimate"] == "nlm"


@pytest.mark.parametrize("denoiser", ["nlm", "bm3d"])
def test_the_denoising_start_from_every_pixel_is_made_beside_the_held_out_one(house, denoiser):
    """Asked for with held-out pixels left out, the start makes the one from every pixel in a thread
    beside it; both are bit for bit those made alone, and the second is returned once, not twice."""
    if denoiser == "bm3d":
        pytest.importorskip("bm3d")
    from deepprior import estimates

    img = np.ascontiguousarray(house[64:128, 64:128])
    noisy = np.clip(img + np.random.default_rng(3).normal(0, 0.1, img.shape), 0, 1).astype(np.float32)
    held = np.random.default_rng(4).random(img.shape[:2]) < 0.02
    made = []

    def make(exclude=None):
        made.append(exclude is None)
        return tasks._denoised_estimate(noisy, 25, denoiser, exclude)

    start = tasks.PairedStart(make)
    np.testing.assert_array_equal(start(held), tasks.DENOISERS[denoiser](
        estimates.fill_from_neighbours(noisy, held), 25))
    np.testing.assert_array_equal(start(), tasks._denoised_estimate(noisy, 25, denoiser))
    assert sorted(made) == [False, True]
    start()
    assert sorted(made) == [False, True, True]  # asked again, it is made again


def test_the_choice_is_made_among_the_presets_blend_weights(rgb32):
    img = np.ascontiguousarray(np.tile(rgb32, (2, 2, 1)))
    noisy = np.clip(img + np.random.default_rng(1).normal(0, 0.1, img.shape), 0, 1).astype(np.float32)
    r = restore(noisy, tasks.Denoise(sigma=25), iterations=30, stop="off", seed=0, threads=1,
                blend_weights=(0.0, 0.5))
    assert set(r.outcome.held_out_errors) == {0.0, 0.5}
    assert r.outcome.fit_weight in (0.0, 0.5)
    with pytest.raises(DeepPriorError, match="blend weights"):
        restore(noisy, tasks.Denoise(sigma=25), iterations=3, blend_weights=(0.5, 2.0))


def test_a_margin_keeps_the_start_unless_the_held_out_pixels_tell_the_fit_apart(rgb32):
    """choose_result with a margin: a candidate whose lead over the start is within the held-out
    pixels' chance spread is not taken; one clearly better is."""
    from deepprior.fitting import choose_result, margin_ratio

    img = np.ascontiguousarray(np.tile(rgb32, (2, 2, 1)))
    problem = tasks.Denoise(sigma=25).problem(Image(img))
    held = np.zeros(img.shape[:2], dtype=bool)
    held[::4, ::4] = True
    problem.hold_out(held)
    truth = torch.from_numpy(np.moveaxis(img, -1, 0))[None]
    rng = torch.Generator().manual_seed(0)
    start = truth + 0.05 * torch.randn(truth.shape, generator=rng)
    close = start.clone()  # the start, but right on one held-out pixel: better, by a lead chance could give
    close[..., 0, 0] = truth[..., 0, 0]
    better = truth + 0.02 * torch.randn(truth.shape, generator=rng)
    for fitted, lead_expected in ((close, False), (better, True)):
        _, w0, errors, leads = choose_result(problem, fitted, start, (0.0, 1.0))
        _, w3, _, leads3 = choose_result(problem, fitted, start, (0.0, 1.0), margin=3.0)
        assert leads == {} and set(leads3) == {1.0}
        assert errors[1.0] < errors[0.0] and w0 == 1.0  # no margin: the least error, however slight
        assert w3 == (1.0 if lead_expected else 0.0) and (leads3[1.0] >= 3.0) == lead_expected
    assert margin_ratio(torch.tensor([-1.0, -1.0])) == math.inf and margin_ratio(torch.tensor([0.5])) == 0.0
    assert margin_ratio(torch.tensor([-1.0, -3.0])) == pytest.approx(2.0)  # mean -2, standard error 1
