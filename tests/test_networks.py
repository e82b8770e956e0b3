import pytest
import torch

from deepprior.networks import NetConfig, build_network, count_parameters, padded_size


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
