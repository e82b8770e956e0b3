import pytest
import torch

from deepprior.networks import NetConfig, Upsampled, build_network, count_parameters, draw_size, padded_size


def test_paper_network_has_the_published_size():
    # skip 128/128/4, 5 scales, 32-channel noise input: the paper's 2.2 M parameters.
    net = build_network(NetConfig(), 32, 3)
    assert count_parameters(net) == 2_217_831


@pytest.mark.parametrize("kind", ["skip", "hourglass"])
@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
@pytest.mark.parametrize("downsample", ["stride", "avg", "max"])
def test_output_shape_and_range(kind, upsample, downsample):
    cfg = NetConfig(kind=kind, channels_down=(8, 8, 8), channels_up=(8, 8, 8), channels_skip=(2, 2, 2),
                    upsample=upsample, downsample=downsample)
    net = build_network(cfg, 4, 3)
    z = torch.rand(1, 4, 32, 48)
    out = net(z)
    assert out.shape == (1, 3, 32, 48)
    assert out.min() >= 0 and out.max() <= 1


def test_hourglass_has_no_skip_branches():
    cfg = NetConfig(kind="hourglass", channels_down=(8, 8), channels_up=(8, 8), channels_skip=(4, 4))
    net = build_network(cfg, 2, 1)
    assert all(m.skip is None for m in net.modules() if hasattr(m, "skip"))
    assert count_parameters(net) < count_parameters(build_network(NetConfig(channels_down=(8, 8), channels_up=(8, 8), channels_skip=(4, 4)), 2, 1))


def test_padded_size_is_a_multiple_and_never_smaller():
    for h, w in [(1, 1), (17, 33), (64, 64), (65, 100)]:
        hp, wp = padded_size(h, w, 5)
        assert hp % 32 == 0 and wp % 32 == 0
        assert hp >= max(h, 64) and wp >= max(w, 64)
    assert padded_size(64, 128, 5) == (64, 128)


def test_a_network_drawn_at_a_fixed_size_keeps_the_aspect_and_upsamples_to_the_image():
    assert draw_size(256, 256, 5, 128 * 128) == (128, 128)
    assert draw_size(100, 100, 5, 128 * 128) == padded_size(100, 100, 5)  # small enough already
    assert draw_size(256, 256, 5, 0) == (256, 256)  # 0: no drawing at a smaller size
    h, w = draw_size(3000, 4000, 5, 128 * 128)
    assert (h, w) == (128, 160)  # about the pixels asked for (sides padded to 32), nearly the aspect
    cfg = NetConfig(channels_down=(8, 8), channels_up=(8, 8), channels_skip=(2, 2))
    inner = build_network(cfg, 4, 3)
    net = Upsampled(inner, (96, 128))
    out = net(torch.rand(1, 4, 24, 32))
    assert out.shape == (1, 3, 96, 128) and out.min() >= 0 and out.max() <= 1
    assert count_parameters(net) == count_parameters(inner)
