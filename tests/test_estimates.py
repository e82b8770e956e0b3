"""The classical estimates a fit can start from (``input="estimate"``)."""

import numpy as np
import pytest
import torch

from deepprior import DeepPriorError, Image, degrade, restore, tasks
from deepprior.degrade import downscale, hole_mask, random_mask
from deepprior import estimates
from deepprior.estimates import biharmonic_fill, upscale
from deepprior.fitting import make_input, returned_phrase
from deepprior.metrics import psnr
from deepprior.networks import padded_size
from deepprior.presets import FitConfig


@pytest.mark.parametrize("channels", [1, 3])
def test_biharmonic_fill_keeps_known_pixels_and_fills_holes_from_them(rgb32, channels):
    img = rgb32 if channels == 3 else rgb32.mean(axis=2, keepdims=True)
    fill = random_mask(img.shape[:2], 0.5, seed=1)
    damaged = img * ~fill[:, :, None]
    out = biharmonic_fill(damaged, fill)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[~fill], img[~fill], atol=1e-6)
    # The holes get values from their neighbours, far closer to the truth than the zeros were.
    assert psnr(out, img) > psnr(damaged, img) + 10


def _stripes(size: int = 48) -> np.ndarray:
    """A texture of oblique stripes: what a smooth fill blurs and a sparse model keeps."""
    yy, xx = np.mgrid[:size, :size]
    return (0.5 + 0.35 * np.cos(2 * np.pi * (xx + 2 * yy) / 7.0))[:, :, None].astype(np.float32)


@pytest.mark.parametrize("channels", [1, 3])
def test_sparse_fill_keeps_known_pixels_and_beats_the_smooth_fill_on_texture(channels):
    img = np.repeat(_stripes(), channels, axis=2)
    fill = random_mask(img.shape[:2], 0.5, seed=1)
    damaged = img * ~fill[:, :, None]
    out = estimates.sparse_fill(damaged, fill)
    assert out.shape == img.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(out[~fill], img[~fill], atol=1e-6)
    assert psnr(out, img) > psnr(biharmonic_fill(damaged, fill), img) + 3


def test_sparse_fill_with_nothing_missing_is_the_image(rgb32):
    fill = np.zeros(rgb32.shape[:2], dtype=bool)
    np.testing.assert_allclose(estimates.sparse_fill(rgb32, fill), rgb32, atol=1e-6)


@pytest.mark.parametrize("block, step", [(8, 1), (16, 2), (16, 4)])
def test_window_averaging_without_a_threshold_is_the_identity_whatever_the_chunks(monkeypatch, block, step):
    # Every pixel of the interior is covered by (b/step)^2 windows: with nothing thresholded the
    # average of their reconstructions is the image, and cutting the windows into bands of rows
    # (to bound memory) changes nothing.
    x = torch.rand(40, 45)
    d = estimates._dct_matrix(block)
    np.testing.assert_allclose((d @ d.T).numpy(), np.eye(block), atol=1e-6)
    whole = [estimates._threshold_windows(x, t, d, step) for t in (0.0, 0.3)]
    p = block - 1
    np.testing.assert_allclose(whole[0][p:-p, p:-p].numpy(), x[p:-p, p:-p].numpy(), atol=1e-5)
    np.testing.assert_allclose(estimates.dct_hard_threshold(x, 0.0, d, step).numpy(), x.numpy(), atol=1e-5)
    monkeypatch.setattr(estimates, "_SPARSE_CHUNK", 4)
    for t, w in zip((0.0, 0.3), whole):
        np.testing.assert_allclose(estimates._threshold_windows(x, t, d, step).numpy(), w.numpy(), atol=1e-5)


def test_a_window_step_that_does_not_divide_the_block_is_refused(rgb32):
    fill = random_mask(rgb32.shape[:2], 0.5, seed=0)
    with pytest.raises(ValueError, match="does not divide"):
        estimates.sparse_fill(rgb32, fill, block=16, step=3)


def test_the_wide_sparse_fill_keeps_the_known_pixels_and_differs_from_the_8x8_one():
    from deepprior.degrade import text_mask

    img = np.repeat(_stripes(64), 3, axis=2)
    fill = text_mask(img.shape[:2], "dip", seed=0)
    damaged = img * ~fill[:, :, None]
    wide = estimates.sparse_fill(damaged, fill, **estimates.SPARSE_WIDE)
    np.testing.assert_allclose(wide[~fill], damaged[~fill], atol=1e-6)  # the fill itself, not mean_fill's np.where
    np.testing.assert_allclose(estimates.mean_fill(damaged, fill, ("sparse16",)), wide, atol=1e-6)
    assert np.abs(wide - estimates.sparse_fill(damaged, fill))[fill].max() > 1e-3
    assert psnr(wide[fill], img[fill]) > psnr(estimates.biharmonic_fill(damaged, fill)[fill], img[fill])
    with pytest.raises(ValueError, match="sparse16"):
        estimates.mean_fill(damaged, fill, ("nope",))


def test_choose_fill_takes_the_candidate_that_best_predicts_hidden_known_pixels():
    from deepprior.degrade import text_mask

    img = np.repeat(_stripes(96), 3, axis=2)  # texture the sparse-DCT fill keeps and Telea smears
    fill = text_mask(img.shape[:2], "dip", seed=0)
    damaged = img * ~fill[:, :, None]
    probe = estimates.probe_mask(fill)
    assert probe.sum() > estimates.MIN_PROBE_PIXELS and not (probe & fill).any()
    chosen, errors = estimates.choose_fill(damaged, fill, (("telea",), ("sparse",), ("telea", "sparse")))
    assert chosen == ("sparse",) and errors[chosen] == min(errors.values()) and len(errors) == 3
    # The probe ranks as the truth does here: the chosen fill is the best inside the real mask.
    truth = {c: psnr(estimates.mean_fill(damaged, fill, c)[fill], img[fill]) for c in errors}
    assert max(truth, key=truth.get) == chosen
    assert estimates.choose_fill(damaged, fill, (("ns",),)) == (("ns",), {})  # one candidate: untried


def test_each_inpainting_starts_from_its_chosen_fills_and_keeps_the_choice(rgb32, monkeypatch):
    from deepprior.degrade import hole_mask, text_mask

    monkeypatch.setattr(estimates, "bm3d_available", lambda: False)  # the text start unrefined (tested below)

    for mode, fill in (("text", text_mask(rgb32.shape[:2], "dip", seed=0)), ("hole", hole_mask(rgb32.shape[:2], 0))):
        damaged = rgb32 * ~fill[:, :, None]
        problem = tasks.Inpaint(mask=fill, mode=mode).problem(Image(damaged))
        start = problem.estimate
        out = start()
        assert start.chosen in tasks.START_FILLS[mode]
        lead = tasks.START_LEAD.get(mode)
        expected = estimates.fills_mean_and_range(damaged, fill, start.chosen, lead)[0]
        np.testing.assert_allclose(out, expected, atol=1e-6)
        # Made again with more pixels hidden (held out), the start keeps the fills it chose.
        held = np.zeros_like(fill)
        held[::5, ::5] = True
        held &= ~fill
        chosen = start.chosen
        np.testing.assert_allclose(start(exclude=held), estimates.fills_mean_and_range(damaged, fill | held, chosen, lead)[0],
                                   atol=1e-6)
    assert tasks.START_FILLS["hole"] == ((*estimates.FILLS, "fsrhalf"),) and tasks.START_LEAD == {"hole": "fsrhalf"}


@pytest.mark.parametrize("channels", [1, 3])
def test_the_shift_map_fill_copies_a_stripe_pattern_into_the_hole_where_a_smooth_fill_blurs_it(channels):
    x = np.mgrid[0:64, 0:66][1]
    stripes = np.repeat(np.where((x // 4) % 2 == 0, 0.8, 0.2).astype(np.float32)[:, :, None], channels, axis=2)
    fill = np.zeros((64, 66), bool)
    fill[22:40, 25:45] = True
    damaged = stripes * ~fill[:, :, None]
    out = estimates.opencv_fill(damaged, fill, "shiftmap")
    assert out.shape == stripes.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[~fill], stripes[~fill])
    assert np.abs(out[fill] - stripes[fill]).mean() < 0.01  # exemplars: the stripes themselves
    assert np.abs(estimates.biharmonic_fill(damaged, fill)[fill] - stripes[fill]).mean() > 0.2


@pytest.mark.parametrize("channels", [1, 3])
def test_the_half_size_fsr_fill_keeps_known_pixels_and_continues_a_ramp(channels):
    y, x = np.mgrid[0:64, 0:66].astype(np.float32)
    ramp = np.repeat((0.2 + 0.5 * (x + y) / 130)[:, :, None], channels, axis=2)
    ramp[:, :, -1] *= 0.8  # colour: the channels differ
    fill = np.zeros((64, 66), bool)
    fill[22:40, 25:45] = True
    out = estimates.fsr_half_fill(ramp * ~fill[:, :, None], fill)
    assert out.shape == ramp.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[~fill], ramp[~fill])
    # The hole (0.14 of the ramp's range across) comes back within a few 8-bit steps of the ramp.
    assert np.abs(out[fill] - ramp[fill]).max() < 0.03


def test_a_large_inpainting_starts_without_the_slow_fills(monkeypatch):
    monkeypatch.setattr(tasks, "LARGE_START_PIXELS", 24 * 24)
    small, large = np.zeros((24, 24), bool), np.zeros((25, 24), bool)
    small[4:8, 4:8] = large[4:8, 4:8] = True
    assert tasks.Inpaint(mask=small, mode="text").start_fills == tasks.START_FILLS["text"]
    assert tasks.Inpaint(mask=large, mode="text").start_fills == (("fsr",),)
    assert tasks.Inpaint(mask=large, mode="hole").start_fills == (("telea", "ns", "fsr"),)


def test_a_large_upscale_starts_from_the_quick_upscale(monkeypatch, rgb32):
    monkeypatch.setattr(estimates, "bm3d_available", lambda: False)
    small = np.ascontiguousarray(rgb32)
    monkeypatch.setattr(tasks, "LARGE_START_PIXELS", 64 * 64)
    problem = tasks.SuperResolution(scale=2).problem(Image(small))
    np.testing.assert_allclose(problem.estimate(), estimates.regularised_upscale(small, 2), atol=1e-6)
    monkeypatch.setattr(tasks, "LARGE_START_PIXELS", 64 * 64 - 1)
    problem = tasks.SuperResolution(scale=2).problem(Image(small))
    assert problem.estimate_name == "quick"
    quick = estimates.quick_upscale(small, 2)
    np.testing.assert_allclose(problem.estimate(), quick, atol=1e-6)
    assert not np.allclose(quick, estimates.regularised_upscale(small, 2), atol=1e-3)


def test_a_text_mask_can_be_written_in_letters_of_a_given_size():
    from deepprior.degrade import text_mask

    big, small = text_mask((200, 300), "dip", size=40), text_mask((200, 300), "dip", size=12)
    rows = lambda m: np.flatnonzero(m.any(axis=1))  # noqa: E731
    assert big.mean() > small.mean() and np.diff(rows(big)).max() > np.diff(rows(small)).max()
    with pytest.raises(DeepPriorError, match="text size"):
        text_mask((200, 300), "dip", size=0)


def test_upscale_has_the_size_and_keeps_a_flat_image_flat():
    flat = np.full((5, 7, 3), 0.25, np.float32)
    out = upscale(flat, 4)
    assert out.shape == (20, 28, 3)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_estimate_input_puts_the_estimate_first_and_noise_after(rgb32):
    fill = random_mask(rgb32.shape[:2], 0.5, seed=0)
    problem = tasks.Reconstruct(mask=fill).problem(Image(rgb32 * ~fill[:, :, None]))
    cfg = FitConfig(input="estimate", input_depth=8, input_scale=0.1)
    hp, wp = padded_size(32, 32, cfg.net.scales)
    z = make_input(cfg, problem, (hp, wp), torch.Generator().manual_seed(0))
    assert z.shape == (1, 8, hp, wp)
    top, left = (hp - 32) // 2, (wp - 32) // 2
    est = z[0, :3, top : top + 32, left : left + 32].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(est, problem.estimate(), atol=1e-6)
    assert 0 <= z[:, 3:].min() and z[:, 3:].max() < 0.1


def test_super_resolution_estimate_is_the_regularised_upscale_without_bm3d(rgb32, monkeypatch):
    monkeypatch.setattr(estimates, "bm3d_available", lambda: False)
    lo = downscale(Image(rgb32), 4)
    problem = tasks.SuperResolution(scale=4).problem(lo)
    assert problem.estimate_name == "regularised"
    np.testing.assert_allclose(problem.estimate(), estimates.regularised_upscale(lo.pixels, 4), atol=1e-6)


def test_the_start_with_bm3d_is_the_plug_and_play_upscale(house, monkeypatch):
    """With the bm3d extra an x2-x4 upscale starts from BM3D plug-and-play on the regularised
    upscale: it stays as close to the data and, on a real photo, closer to the truth; x8, large
    results and images too small for the bm3d package keep the other starts."""
    pytest.importorskip("bm3d")
    from deepprior.operators import LanczosDownsampler

    clean = Image(np.ascontiguousarray(house[64:160, 64:160]))
    lo = downscale(clean, 4)
    problem = tasks.SuperResolution(scale=4).problem(lo)
    assert problem.estimate_name == "bm3d"
    start, regularised = problem.estimate(), estimates.regularised_upscale(lo.pixels, 4)
    np.testing.assert_array_equal(start, estimates.bm3d_upscale(lo.pixels, 4))  # repeatable
    assert start.shape == clean.pixels.shape and 0 <= start.min() and start.max() <= 1
    a = LanczosDownsampler(4, 3)

    def residual(x):
        return float(((a(torch.from_numpy(np.moveaxis(x, -1, 0).copy())[None])[0].numpy()
                       - np.moveaxis(lo.pixels, -1, 0)) ** 2).mean())

    assert residual(start) < 2 * residual(regularised)
    assert psnr(start, clean.pixels) > psnr(regularised, clean.pixels)
    task = tasks.SuperResolution(scale=4)
    assert [tasks.SuperResolution(scale=s).upscaler(24, 24) for s in (2, 3, 8)] == ["bm3d", "bm3d", "regularised"]
    assert task.upscaler(3, 3) == "regularised"  # 12x12: too small for the bm3d package
    monkeypatch.setattr(tasks, "LARGE_START_PIXELS", 96 * 96 - 1)
    assert task.upscaler(24, 24) == "quick"


def test_bm3d_in_two_halves_side_by_side_matches_one_call(house):
    """The SR start's BM3D runs on the two halves of the image in two threads: the same result
    as one call to within a hundredth of a dB, repeatable bit for bit; small images run whole."""
    pytest.importorskip("bm3d")
    clean = np.ascontiguousarray(house[40:168, 60:156].mean(axis=2, keepdims=True))  # 128x96: cut across its rows
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 15 / 255, clean.shape), 0, 1).astype(np.float32)
    whole, halves = estimates.bm3d_denoise(noisy, 15), estimates.bm3d_denoise_halves(noisy, 15)
    assert halves.shape == noisy.shape and halves.dtype == np.float32
    np.testing.assert_array_equal(halves, estimates.bm3d_denoise_halves(noisy, 15))
    assert abs(psnr(halves, clean) - psnr(whole, clean)) < 0.01
    assert psnr(halves, clean) > psnr(noisy, clean) + 5
    wide = np.ascontiguousarray(noisy.transpose(1, 0, 2))  # cut across its columns
    np.testing.assert_allclose(estimates.bm3d_denoise_halves(wide, 15), halves.transpose(1, 0, 2), atol=1e-6)
    small = noisy[:120, :96]
    np.testing.assert_array_equal(estimates.bm3d_denoise_halves(small, 15), estimates.bm3d_denoise(small, 15))
    # The profile reaches both halves: the low-complexity one (the SR start's) is its own result.
    lc = estimates.bm3d_denoise_halves(noisy, 15, "lc")
    assert psnr(lc, clean) > psnr(noisy, clean) + 5
    assert not np.array_equal(lc, halves)
    np.testing.assert_array_equal(estimates.bm3d_denoise_halves(small, 15, "lc"), estimates.bm3d_denoise(small, 15, "lc"))


def test_the_bm3d_upscale_runs_its_scale_s_profile_and_passes(monkeypatch):
    """The SR start's BM3D passes follow BM3D_UPSCALE_PASSES: at x4 eight of the low-complexity
    profile, at x2 and x3 six of the normal one, the noise level falling from 30 to 2 on 0-255."""
    calls = []
    monkeypatch.setattr(estimates, "bm3d_denoise_halves",
                        lambda x, sigma, profile="np": calls.append((profile, sigma)) or x)
    pixels = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    for scale, profile, passes in ((4, "lc", 8), (2, "np", 6), (3, "np", 6)):
        calls.clear()
        assert estimates.bm3d_upscale(pixels, scale).shape == (8 * scale, 8 * scale, 3)
        assert [p for p, _ in calls] == [profile] * passes
        np.testing.assert_allclose([s for _, s in calls], np.geomspace(30.0, 2.0, passes))


def test_bm3d_low_complexity_profile_denoises_and_an_unknown_profile_is_refused(house):
    """The refinement's low-complexity BM3D is another result than the normal profile's, still
    a denoiser (far above the noisy image); a profile that is not offered is a clear error."""
    pytest.importorskip("bm3d")
    clean = np.ascontiguousarray(house[40:168, 60:156].mean(axis=2, keepdims=True))
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 15 / 255, clean.shape), 0, 1).astype(np.float32)
    quick = estimates.bm3d_denoise(noisy, 15, "lc")
    assert quick.shape == noisy.shape and quick.dtype == np.float32
    assert not np.array_equal(quick, estimates.bm3d_denoise(noisy, 15))
    assert psnr(quick, clean) > psnr(noisy, clean) + 5
    with pytest.raises(ValueError, match="unknown BM3D profile"):
        estimates.bm3d_denoise(noisy, 15, "fast")


def test_bm3d_on_a_grey_picture_stored_as_colour_is_grey_bm3d_in_every_channel(house):
    """CBM3D divides by the range of each colour difference; a grey picture stored as RGB has
    none, and its denoised copy is the grey one's in all three channels, not NaN."""
    pytest.importorskip("bm3d")
    clean = np.ascontiguousarray(house[40:168, 60:156].mean(axis=2, keepdims=True))
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 15 / 255, clean.shape), 0, 1).astype(np.float32)
    grey = estimates.bm3d_denoise(noisy, 15)
    colour = estimates.bm3d_denoise(np.repeat(noisy, 3, axis=2), 15)
    assert np.isfinite(colour).all()
    np.testing.assert_allclose(colour, np.repeat(grey, 3, axis=2), atol=1e-6)


def test_an_upscale_blends_less_of_the_fit_over_the_bm3d_start(rgb32, monkeypatch):
    """The fit's share of an upscale follows its start: a tenth over the BM3D upscale at x2, a
    quarter at x3 and x4, the even mean over the regularised upscale (the start is not computed)."""
    def starts():
        return [(p.estimate_name, p.fit_share) for p in (tasks.SuperResolution(scale=s).problem(Image(rgb32)) for s in (2, 3, 4))]

    monkeypatch.setattr(estimates, "bm3d_available", lambda: True)
    assert starts() == [("bm3d", 0.1), ("bm3d", 0.25), ("bm3d", 0.25)]
    monkeypatch.setattr(estimates, "bm3d_available", lambda: False)
    assert starts() == [("regularised", 0.5)] * 3


def test_only_a_text_start_is_refined_by_bm3d_and_only_where_it_is_installed(monkeypatch):
    """The refinement is for text with the bm3d extra, up to the large-image size; holes keep the
    mean of fills and reconstruction its own BM3D fill (the start is not computed)."""
    mask = np.zeros((24, 24), bool)
    mask[4:8, 4:8] = True

    def refined(task):  # the BM3D fill is blended in exactly where the start is refined
        assert task.partner_fill == task.refine_start
        return task.refine_start

    monkeypatch.setattr(estimates, "bm3d_available", lambda: True)
    assert refined(tasks.Inpaint(mask=mask, mode="text"))
    assert not refined(tasks.Inpaint(mask=mask, mode="hole"))
    assert not refined(tasks.Reconstruct(mask=mask))
    assert not refined(tasks.Inpaint(mask=mask[:8, :8], mode="text"))  # too small for the bm3d package
    monkeypatch.setattr(tasks, "LARGE_START_PIXELS", 24 * 24 - 1)
    assert not refined(tasks.Inpaint(mask=mask, mode="text"))
    monkeypatch.setattr(tasks, "LARGE_START_PIXELS", 24 * 24)
    monkeypatch.setattr(estimates, "bm3d_available", lambda: False)
    assert not refined(tasks.Inpaint(mask=mask, mode="text"))


def test_a_refined_start_refines_the_chosen_fills_each_time_it_is_made(rgb32, monkeypatch):
    """The start with held-out pixels left out and the start made again from every pixel are both
    the chosen mean of fills, refined, each from its own fill; the second is made with the first
    (their refinements side by side) and returned by the next call, not made again."""
    calls = []

    def refine(start, pixels, fill):
        calls.append(int(fill.sum()))
        return start + 0.5

    monkeypatch.setattr(estimates, "bm3d_refine", refine)
    fill = random_mask(rgb32.shape[:2], 0.2, seed=3)
    held = random_mask(rgb32.shape[:2], 0.05, seed=4) & ~fill
    start = tasks.FillStart(rgb32, fill, (("fsr",),), refine=True)
    np.testing.assert_allclose(start(held), estimates.mean_fill(rgb32, fill | held, ("fsr",)) + 0.5, atol=1e-6)
    assert sorted(calls) == sorted([(fill | held).sum(), fill.sum()])
    np.testing.assert_allclose(start(), estimates.mean_fill(rgb32, fill, ("fsr",)) + 0.5, atol=1e-6)
    assert len(calls) == 2
    np.testing.assert_allclose(start(), estimates.mean_fill(rgb32, fill, ("fsr",)) + 0.5, atol=1e-6)
    assert len(calls) == 3  # asked again, it is made again


@pytest.mark.parametrize("task", ["text", "reconstruct"])
def test_the_start_from_every_pixel_made_beside_the_held_out_one_is_the_same(house, task):
    """The start from every pixel, made in a thread beside the held-out one, is bit for bit the one
    made alone (the fills and BM3D are repeatable), and the held-out one is unchanged by it."""
    img = np.ascontiguousarray(house[64:160, 64:160])
    if task == "text":
        fill = degrade.text_mask(img.shape[:2], "deep image prior", 0, size=12)
        candidates, refine = tasks.START_FILLS["text"], estimates.bm3d_available()
    else:
        fill = random_mask(img.shape[:2], 0.5, seed=6)
        candidates, refine = tasks.Reconstruct(mask=fill).start_fills, False
    held = random_mask(img.shape[:2], 0.02, seed=5) & ~fill
    damaged = img * ~fill[:, :, None]
    both = tasks.FillStart(damaged, fill, candidates, refine)
    start = both(held)
    full = both()
    alone = tasks.FillStart(damaged, fill, candidates, refine)
    alone.chosen = both.chosen
    np.testing.assert_array_equal(full, alone())
    np.testing.assert_array_equal(start, alone(held))
    np.testing.assert_array_equal(full[~fill], damaged[~fill])


def test_bm3d_refine_keeps_the_known_pixels_and_brings_the_text_closer_to_the_truth(house):
    """Plug-and-play BM3D from the text start: exact on the known pixels, repeatable, and inside
    the strokes closer to the truth than the mean of fills it started from, on a real photo."""
    pytest.importorskip("bm3d")
    img = np.ascontiguousarray(house[64:192, 64:192])
    fill = degrade.text_mask(img.shape[:2], "deep image prior", 0, size=12)
    damaged = img * ~fill[:, :, None]
    start = estimates.mean_fill(damaged, fill, ("sparse", "sparse16"))
    out = estimates.bm3d_refine(start, damaged, fill)
    assert out.shape == img.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    np.testing.assert_array_equal(out[~fill], damaged[~fill])
    np.testing.assert_array_equal(out, estimates.bm3d_refine(start, damaged, fill))
    assert psnr(out[fill], img[fill]) > psnr(start[fill], img[fill])


def test_the_bm3d_fill_of_luminance_keeps_the_known_pixels_and_fills_closer_than_its_sparse_start(house):
    """BM3D on the luminance alone: exact on the known pixels, repeatable, the same as the full
    BM3D fill on a grey image, and inside the text closer to the truth than the sparse-DCT fill
    it starts from, on a real colour photo."""
    pytest.importorskip("bm3d")
    img = np.ascontiguousarray(house[64:160, 64:160])
    fill = degrade.text_mask(img.shape[:2], "deep image prior", 0, size=12)
    damaged = img * ~fill[:, :, None]
    out = estimates.bm3d_fill(damaged, fill, luminance=True)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[~fill], damaged[~fill])
    np.testing.assert_array_equal(out, estimates.bm3d_fill(damaged, fill, luminance=True))
    sparse = estimates.sparse_fill(damaged, fill)
    assert psnr(out[fill], img[fill]) > psnr(sparse[fill], img[fill])
    grey = np.ascontiguousarray(damaged.mean(axis=2, keepdims=True))
    np.testing.assert_array_equal(estimates.bm3d_fill(grey, fill, luminance=True), estimates.bm3d_fill(grey, fill))


def test_the_bm3d_fill_partners_a_text_start_unless_the_probe_rules_it_out():
    """The BM3D fill (blended into text fills where the start is refined, see above) takes its
    share, and none where the probe found the sparse-DCT fills it refines far off the chosen start."""
    mask = np.zeros((24, 24), bool)
    mask[4:8, 4:8] = True
    start = tasks.FillStart(np.zeros((24, 24, 3), np.float32), mask, tasks.START_FILLS["text"], True, True)
    assert start.partner_share == 0.0  # nothing chosen yet
    start.chosen = ("fsr", "sparse16")
    start.errors = {("fsr", "sparse16"): 1.0, ("sparse", "sparse16"): tasks.PARTNER_PROBE_RATIO * 0.99}
    assert start.partner_share == tasks.PARTNER_SHARE
    start.errors[("sparse", "sparse16")] = tasks.PARTNER_PROBE_RATIO
    assert start.partner_share == 0.0 and start.partner() == (None, 0.0)
    assert tasks.FillStart(np.zeros((24, 24, 3), np.float32), mask, tasks.START_FILLS["text"], True).partner_share == 0.0


def test_a_text_fill_returns_its_choice_blended_with_the_bm3d_fill_and_says_so(rgb32, monkeypatch):
    """Where the BM3D fill partners the start, the result is the fit's choice blended with it at its
    share (the same fit, seed for seed, as without it), the known pixels kept, and the report names it."""
    monkeypatch.setattr(estimates, "bm3d_available", lambda: True)
    monkeypatch.setattr(estimates, "bm3d_refine", lambda start, pixels, fill: start)
    partner, made = np.full(rgb32.shape, 0.9, np.float32), []
    monkeypatch.setattr(estimates, "bm3d_fill", lambda pixels, fill, luminance=False: made.append(1) or partner)
    fill = degrade.text_mask(rgb32.shape[:2], "dip", 0, size=10)
    damaged = rgb32 * ~fill[:, :, None]
    task = tasks.Inpaint(mask=fill, mode="text")
    r = restore(damaged, task, iterations=6)
    with monkeypatch.context() as m:
        m.setattr(tasks.Inpaint, "partner_fill", property(lambda self: False))
        alone = restore(damaged, task, iterations=6)
    share = tasks.PARTNER_SHARE
    np.testing.assert_allclose(r.image.pixels[fill], (1 - share) * alone.image.pixels[fill] + share * 0.9, atol=1e-5)
    np.testing.assert_array_equal(r.image.pixels[~fill], damaged[~fill])
    assert r.outcome.partner_share == share and alone.outcome.partner_share == 0.0
    assert r.report()["returned"]["blended_with"] == {"estimate": "BM3D fill", "share": share}
    assert returned_phrase(r.outcome).endswith(f" with {share:.0%} of the BM3D fill blended in")
    assert len(made) == 1
    # The start alone (0 iterations) neither makes nor blends it.
    assert restore(damaged, task, iterations=0).outcome.partner_share == 0.0 and len(made) == 1


def test_beside_reports_the_slower_of_its_two_estimates(monkeypatch):
    """Progress of a pair made in two threads is the slower one's, rising to 1 only when both are
    done, all reported from the caller's thread, whichever of the two is slower."""
    import threading
    import time

    monkeypatch.setattr(estimates, "BESIDE_REPORT_S", 0.02)
    ended = []

    def steps(n, pause):
        def make():
            for i in range(1, n + 1):
                time.sleep(pause)
                if i == n:
                    ended.append(n)
                estimates._done(i / n)
            return np.zeros(1)
        return make

    caller = threading.get_ident()
    for first, second in [(steps(2, 0.01), steps(5, 0.1)), (steps(5, 0.1), steps(2, 0.01))]:
        seen, ended[:] = [], []
        with estimates.reporting(lambda f: seen.append((f, len(ended), threading.get_ident()))):
            estimates.beside(first, second)
        fractions = [f for f, _, _ in seen]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        assert all(f < 1.0 for f, both, _ in seen if both < 2)  # not done before both are
        assert {0.2, 0.4, 0.6, 0.8} & set(fractions)  # the slower one's (five) steps are reported
        assert {t for _, _, t in seen} == {caller}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_regularised_upscale_agrees_with_the_data_and_beats_bicubic(house, scale):
    """Back-projection makes A(x) match the low-resolution image far better than bicubic does, and on a
    real photo (downscaled by Pillow, not by the fit's own operator) the result is closer to the truth."""
    from deepprior.operators import LanczosDownsampler

    clean = Image(np.ascontiguousarray(house[64:160, 64:160]))
    lo = downscale(clean, scale).pixels
    a = LanczosDownsampler(scale, 3)

    def residual(x):
        return float(((a(torch.from_numpy(np.moveaxis(x, -1, 0).copy())[None])[0].numpy()
                       - np.moveaxis(lo, -1, 0)) ** 2).mean())

    bicubic, start = upscale(lo, scale), estimates.regularised_upscale(lo, scale)
    assert start.shape == bicubic.shape == clean.pixels.shape and 0 <= start.min() and start.max() <= 1
    assert residual(start) < 0.5 * residual(bicubic)
    assert psnr(start, clean.pixels) > psnr(bicubic, clean.pixels) + 0.2


def test_back_projection_with_dct_thresholding_differs_from_plain_back_projection(rgb32):
    lo = downscale(Image(rgb32), 4).pixels
    plain, sparse = estimates.back_project(lo, 4, sparse=False), estimates.back_project(lo, 4)
    assert plain.shape == sparse.shape == (32, 32, 3)
    assert np.abs(plain - sparse).max() > 1e-3


def test_tv_refine_flattens_a_noisy_start_without_leaving_the_data(rgb32):
    lo = downscale(Image(rgb32), 4).pixels
    start = estimates.back_project(lo, 4)
    noisy = np.clip(start + np.random.default_rng(0).normal(0, 0.05, start.shape), 0, 1).astype(np.float32)

    def tv(x):
        return np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()

    out = estimates.tv_refine(noisy, lo, 4)
    assert tv(out) < 0.5 * tv(noisy)
    assert np.abs(out - start).mean() < np.abs(noisy - start).mean()


def test_estimate_input_on_a_task_without_one_is_a_clear_error(rgb32):
    with pytest.raises(DeepPriorError, match="needs a task with a classical estimate"):
        restore(rgb32, tasks.Deblur.from_spec("gaussian:1"), iterations=2, input="estimate")


def test_starting_from_the_estimate_beats_starting_from_noise(house):
    """The reason the input exists: after a few iterations the fit is at the content, not at noise."""
    clean = np.ascontiguousarray(house[80:144, 80:144])
    fill = random_mask(clean.shape[:2], 0.5, seed=0)
    task = tasks.Reconstruct(mask=fill, keep_known=False)
    kw = dict(reference=clean, iterations=60, stop="off", seed=0)
    noise = restore(clean * ~fill[:, :, None], task, input="noise", **kw)
    est = restore(clean * ~fill[:, :, None], task, input="estimate", **kw)
    assert est.metrics["psnr"] > noise.metrics["psnr"], (est.metrics, noise.metrics)


@pytest.mark.parametrize("sigma", [10, 25, 50])
def test_noise_sigma_reads_the_noise_level_of_a_real_photo(house, sigma):
    from deepprior.degrade import add_noise
    from deepprior.estimates import noise_sigma

    noisy = add_noise(Image(house), sigma, seed=0).pixels
    # Clipping at 0 and 1 removes some of the noise at sigma 50; texture adds a little at 10.
    assert abs(noise_sigma(noisy) * 255 - sigma) < 0.1 * sigma + 1
    assert noise_sigma(np.full((8, 8, 3), 0.5, np.float32)) == 0.0


def test_denoise_estimate_is_non_local_means_at_the_given_or_estimated_sigma(house):
    from deepprior.degrade import add_noise

    clean = np.ascontiguousarray(house[80:144, 80:144])
    noisy = add_noise(Image(clean), 25, seed=0)
    for task in (tasks.Denoise(sigma=25), tasks.Denoise()):
        est = task.problem(noisy).estimate()
        assert est.shape == clean.shape
        assert psnr(est, clean) > psnr(noisy.pixels, clean) + 3


def test_fill_from_neighbours_replaces_only_excluded_pixels_by_their_neighbours_mean():
    rng = np.random.default_rng(0)
    img = rng.random((12, 10, 3)).astype(np.float32)
    exclude = np.zeros((12, 10), dtype=bool)
    exclude[5, 5] = exclude[0, 0] = True
    out = estimates.fill_from_neighbours(img, exclude)
    np.testing.assert_array_equal(out[~exclude], img[~exclude])
    np.testing.assert_allclose(out[5, 5], (img[4:7, 4:7].sum(axis=(0, 1)) - img[5, 5]) / 8, rtol=1e-5)
    # a pixel with no kept neighbour in 3x3 gets one from a wider window
    block = np.zeros((12, 10), dtype=bool)
    block[3:8, 3:8] = True
    far = estimates.fill_from_neighbours(img, block)
    assert np.isfinite(far).all() and (far[block] != img[block]).any()
    assert estimates.fill_from_neighbours(img, None) is img


def test_colour_non_local_means_works_in_an_opponent_space(house):
    # The opponent basis is orthonormal (white noise stays white, the round trip is exact), so a grey
    # picture stored as RGB has zero colour differences and comes back grey, equal to the grey filter's
    # answer on its one channel. Its noise is the same in R, G and B, so on luminance (sqrt(3) x grey) it
    # is sqrt(3) x sigma, against the sigma the filter assumes: the grey filter at sigma / sqrt(3).
    from deepprior.degrade import add_noise

    basis = estimates._OPPONENT
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-12)
    grey = np.ascontiguousarray(house[80:144, 80:144].mean(axis=2, keepdims=True))
    noisy = add_noise(Image(grey), 25, seed=0).pixels
    as_rgb = estimates.nlm_denoise(np.repeat(noisy, 3, axis=2), 25)
    alone = estimates.nlm_denoise(noisy, 25 / np.sqrt(3))
    np.testing.assert_allclose(as_rgb[:, :, 0], as_rgb[:, :, 2], atol=1e-5)
    np.testing.assert_allclose(as_rgb[:, :, 1], as_rgb[:, :, 0], atol=1e-5)
    np.testing.assert_allclose(as_rgb[:, :, :1], alone, atol=1e-4)


def _reported(make) -> tuple[np.ndarray, list[float]]:
    """What ``make()`` returns and the fractions of its work it reported."""
    seen = []
    with estimates.reporting(seen.append):
        out = make()
    return out, seen


@pytest.mark.parametrize("what", ["upscale", "quick upscale", "bm3d upscale", "sparse fill", "fills", "choice",
                                  "refined choice", "nlm"])
def test_slow_estimates_report_how_far_they_are(rgb32, what):
    """A start can take minutes on a large image: the slow estimates report the fraction of their
    work done, rising to 1, and give the same result as without anyone listening."""
    if what in ("bm3d upscale", "refined choice"):
        pytest.importorskip("bm3d")
    fill = random_mask(rgb32.shape[:2], 0.3, seed=2)
    big = np.ascontiguousarray(np.tile(rgb32, (2, 2, 1)))  # pixels enough for the choice's probe
    make = {
        "upscale": lambda: estimates.regularised_upscale(rgb32[:16, :16], 2),
        "quick upscale": lambda: estimates.quick_upscale(rgb32[:16, :16], 2),
        "bm3d upscale": lambda: estimates.bm3d_upscale(rgb32[:8, :8], 4),
        "sparse fill": lambda: estimates.sparse_fill(rgb32, fill),
        "fills": lambda: estimates.mean_fill(rgb32, fill),
        "choice": lambda: tasks.FillStart(big, random_mask(big.shape[:2], 0.3, seed=2), tasks.START_FILLS["text"])(),
        "refined choice": lambda: tasks.FillStart(big, random_mask(big.shape[:2], 0.3, seed=2), tasks.START_FILLS["text"],
                                                  refine=True)(),
        "nlm": lambda: estimates.nlm_denoise(rgb32, 25),
    }[what]
    out, seen = _reported(make)
    assert len(seen) >= 3 and seen[-1] == 1.0
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(seen, seen[1:]))  # rising, in [0, 1]
    np.testing.assert_array_equal(out, make())


@pytest.mark.parametrize("kind", ["text", "hole"])
@pytest.mark.parametrize("channels", [1, 3])
def test_fsr_in_strips_is_the_whole_fill_and_reports_each_strip(house, kind, channels):
    """OpenCV's FSR is one library call; run strip by strip it reports as it goes, and fills as
    the whole call does (within one grey level: a block's neighbours may be filled in another order)."""
    import cv2

    pixels = house if channels == 3 else np.ascontiguousarray(house.mean(axis=2, keepdims=True))
    shape = pixels.shape[:2]
    fill = degrade.text_mask(shape, "deep image prior", 0, size=12) if kind == "text" else degrade.hole_mask(shape, 0)
    img = Image(pixels).to_array(np.uint8)
    whole = np.zeros_like(img)
    cv2.xphoto.inpaint(img, (~fill).astype(np.uint8), whole, cv2.xphoto.INPAINT_FSR_FAST)
    strips, seen = _reported(lambda: estimates._fsr_in_strips(img, fill, strip=32))
    difference = np.abs(strips.astype(int) - whole.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    assert len(seen) == 256 // 32 and seen[-1] == 1.0


def test_an_interrupted_fsr_fill_does_not_wait_for_the_strips_not_begun(house, monkeypatch):
    import cv2

    img = Image(house).to_array(np.uint8)
    fill = degrade.text_mask(house.shape[:2], "deep image prior", 0, size=12)
    calls, inpaint = [], cv2.xphoto.inpaint
    monkeypatch.setattr(cv2.xphoto, "inpaint", lambda *a: (calls.append(1), inpaint(*a))[1])

    def interrupt(fraction):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), estimates.reporting(interrupt):
        estimates._fsr_in_strips(img, fill, strip=16)
    assert len(calls) < 256 // 16 // 2


def test_a_shared_estimate_reports_within_its_span():
    seen = []
    with estimates.reporting(seen.append):
        with estimates.share(0.5, 0.75):
            estimates._done(0.0)
            estimates._done(1.0)
        estimates._done(1.0)
    assert seen == [0.5, 0.75, 1.0]
    estimates._done(0.5)  # nobody listening: nothing to do


def test_the_range_of_the_fills_brackets_their_mean_and_keeps_the_known_pixels(rgb32):
    fill = hole_mask(rgb32.shape[:2], 0)
    mean, low, high = estimates.fills_mean_and_range(rgb32, fill, ("telea", "ns", "biharmonic"))
    np.testing.assert_array_equal(mean, estimates.mean_fill(rgb32, fill, ("telea", "ns", "biharmonic")))
    assert (low <= mean + 1e-7).all() and (mean <= high + 1e-7).all() and (high - low)[fill].max() > 0.01
    for v in (mean, low, high):
        np.testing.assert_array_equal(v[~fill], rgb32[~fill])


def test_a_mean_that_leans_on_one_fill_is_the_even_mean_of_the_fills_mean_and_that_fill(rgb32):
    fill = hole_mask(rgb32.shape[:2], 0)
    methods = ("telea", "ns", "biharmonic")
    mean, low, high = estimates.fills_mean_and_range(rgb32, fill, methods)
    leaning, low2, high2 = estimates.fills_mean_and_range(rgb32, fill, methods, lead="biharmonic")
    biharmonic = estimates.biharmonic_fill(rgb32, fill)
    np.testing.assert_allclose(leaning[fill], ((mean + biharmonic) / 2)[fill], atol=1e-6)
    assert np.abs(leaning - mean)[fill].max() > 0.01  # it moved towards the lead
    np.testing.assert_array_equal(leaning[~fill], rgb32[~fill])
    np.testing.assert_array_equal(low2, low)  # the range is still all the fills'
    np.testing.assert_array_equal(high2, high)
    # A lead that is not among the fills (a large image's start leaves the slow ones out) is ignored.
    np.testing.assert_array_equal(estimates.fills_mean_and_range(rgb32, fill, methods, lead="fsrhalf")[0], mean)


def test_only_a_hole_start_keeps_the_fills_range_and_a_text_start_makes_it_when_asked(rgb32):
    fill = hole_mask(rgb32.shape[:2], 0)
    methods = ("telea", "ns", "biharmonic")
    _, low, high = estimates.fills_mean_and_range(rgb32, fill, methods)
    for keep in (True, False):
        start = tasks.FillStart(rgb32, fill, (methods,), keep_range=keep)
        start()
        assert (start._range is not None) == keep  # two full-size images held only where used
        made_low, made_high = start.fills_range()
        np.testing.assert_array_equal(made_low, low)
        np.testing.assert_array_equal(made_high, high)
