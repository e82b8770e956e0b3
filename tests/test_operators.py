import numpy as np
import pytest
import torch

from deepprior import DeepPriorError, Image
from deepprior.degrade import downscale
from deepprior.operators import Blur, LanczosDownsampler, Mask, gaussian_kernel, lanczos_kernel, motion_kernel, parse_kernel
from deepprior.tasks import Inpaint


@pytest.mark.parametrize("support", [2, 3])
@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_lanczos_kernel_is_normalised_symmetric_and_support_wide(factor, support):
    k = lanczos_kernel(factor, support)
    n = 2 * support * factor
    width = n if factor % 2 == 0 else n - 1  # odd factors: taps on pixel centres
    assert k.shape == (width, width)
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k[::-1, ::-1])
    np.testing.assert_allclose(k, k.T)


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_downsampler_reaches_support_low_resolution_pixels(factor):
    assert LanczosDownsampler(factor, 1).reach == 3
    assert LanczosDownsampler(factor, 1, support=2).reach == 2


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_downsampler_matches_pillow_lanczos(factor):
    # Users' low-resolution images (and the suites': degrade.downscale) come from Pillow's Lanczos-3
    # downscaling: the data term's A makes the same image from the same high-resolution one, away
    # from the border (Pillow clips its window there, the operator replicates).
    rng = np.random.default_rng(factor)
    hr = np.kron(rng.random((12, 12)), np.ones((2 * factor, 2 * factor)))[: 16 * factor, : 16 * factor]
    hr = np.clip(hr + 0.05 * rng.standard_normal(hr.shape), 0, 1).astype(np.float32)[:, :, None]
    inner = (slice(3, -3), slice(3, -3))
    pil = downscale(Image(hr, bit_depth=16), factor).pixels[:, :, 0][inner]  # Pillow in floating point

    def rms(support):
        ours = LanczosDownsampler(factor, 1, support=support)(torch.from_numpy(hr[:, :, 0])[None, None])[0, 0].numpy()
        return np.sqrt(np.mean((ours[inner] - pil) ** 2))

    assert rms(3) < 1e-5  # Pillow's kernel, to float rounding
    assert rms(2) > 5e-3  # the paper's Lanczos-2 is a different image


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_constant_image_passes_downsampler_unchanged(factor):
    op = LanczosDownsampler(factor, 3)
    x = torch.full((1, 3, 8 * factor, 5 * factor), 0.37)
    y = op(x)
    assert y.shape == (1, 3, 8, 5)
    torch.testing.assert_close(y, torch.full_like(y, 0.37))


@pytest.mark.parametrize("f", [2, 3, 4, 8])
def test_downsampler_keeps_block_centres(f):
    # A linear ramp sampled at block centres stays a ramp: LR pixel i sits at HR i*f + (f-1)/2, the centre
    # of its block, as with any standard downscaler (the paper's even-width kernel put x3 half a pixel off).
    ramp = torch.arange(16 * f, dtype=torch.float32).repeat(16 * f, 1)[None, None]
    y = LanczosDownsampler(f, 1)(ramp)[0, 0]
    centres = torch.arange(16) * f + (f - 1) / 2
    torch.testing.assert_close(y[8, 3:13], centres[3:13], atol=1e-3, rtol=0)


def test_masked_pixels_never_enter_the_loss():
    rng = np.random.default_rng(0)
    fill = rng.random((12, 10)) < 0.5
    y = rng.random((12, 10, 3)).astype(np.float32)
    from deepprior.images import Image

    problem = Inpaint(mask=fill).problem(Image(y))
    x = torch.rand(1, 3, 12, 10, requires_grad=True)
    loss = problem.loss(x)
    loss.backward()
    grad = x.grad[0].permute(1, 2, 0).numpy()
    assert np.all(grad[fill] == 0)
    assert np.any(grad[~fill] != 0)
    # changing the observation where it is missing changes nothing
    y2 = y.copy()
    y2[fill] = 1 - y2[fill]
    problem2 = Inpaint(mask=fill).problem(Image(y2))
    assert problem2.loss(x.detach()).item() == pytest.approx(loss.item())


def test_mask_operator_zeroes_unknown():
    known = np.array([[1, 0], [0, 1]], dtype=np.float32)
    out = Mask(known)(torch.ones(1, 1, 2, 2))
    assert out[0, 0].tolist() == [[1, 0], [0, 1]]


def test_blur_keeps_constants_and_delta_is_identity():
    x = torch.rand(1, 3, 20, 17)
    delta = np.zeros((5, 5), np.float32)
    delta[2, 2] = 1
    torch.testing.assert_close(Blur(delta, 3)(x), x)
    c = torch.full((1, 1, 20, 17), 0.6)
    torch.testing.assert_close(Blur(gaussian_kernel(2.0), 1)(c), c)
    k = motion_kernel(9, 30)
    assert k.sum() == pytest.approx(1.0)
    torch.testing.assert_close(Blur(k, 1)(c), c)


def test_blur_is_a_convolution_not_a_correlation():
    k = np.zeros((3, 3), np.float32)
    k[1, 2] = 1  # a kernel that shifts by one pixel
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1
    y = Blur(k, 1)(x)[0, 0]
    assert y[2, 3] == 1  # convolution moves the impulse in the kernel's direction


@pytest.mark.parametrize("spec", ["gaussian:-1", "motion:0,10", "gaussian:abc", "motion:x", "nonexistent.png"])
def test_bad_kernel_specs_are_clear_errors(spec):
    with pytest.raises(DeepPriorError):
        parse_kernel(spec)


def test_kernel_array_must_be_small_and_positive():
    with pytest.raises(DeepPriorError):
        parse_kernel(np.zeros((5, 5)))
    with pytest.raises(DeepPriorError):
        parse_kernel(np.ones((200, 200)))
    k = parse_kernel(np.ones((3, 3)))
    assert k.sum() == pytest.approx(1.0)
