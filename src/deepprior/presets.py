"""Hyperparameters as data: one table per task, one row per preset.

``paper`` is the published configuration of Ulyanov et al. (CVPR 2018, and the authors'
notebooks): it is the reference and stays as published. ``fast`` is the CPU-friendly default.
A preset is a frozen :class:`FitConfig`; callers override single fields with
``dataclasses.replace`` (the command line's ``--iters`` does exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .networks import NetConfig


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides how a fit runs, apart from the task and the image."""

    net: NetConfig = field(default_factory=NetConfig)
    input: str = "noise"  # "noise" (uniform * input_scale), "meshgrid", "image" (task supplies it) or "estimate"
    input_depth: int = 32
    input_scale: float = 0.1
    optimize_input: bool = False
    input_lr: float | None = None  # learning rate of z when it is optimised (None: ``lr``)
    # Deep Random Projector (Li et al., CVPR 2023): keep the convolutions at their random
    # initialisation and fit only the input and the BatchNorm parameters.
    freeze_convolutions: bool = False
    tv_weight: float = 0.0  # weight of a total-variation term on the output, added to the data term
    lr: float = 0.01
    iterations: int = 3000  # the cap: automatic stopping may end earlier
    reg_noise_std: float = 1.0 / 30.0  # input perturbation each iteration
    ema: float = 0.99  # exponential averaging of outputs; 0 disables it
    ema_warmup: int = 0  # > 0: the decay at iteration t is min(ema, (1 + t) / (ema_warmup + t)) (fitting.ema_decay)
    backtrack: bool = True  # reload the last good weights when the data-term PSNR drops > 5 dB
    backtrack_every: int = 50
    backtrack_drop_db: float = 5.0
    stop: str = "auto"  # "auto" (the stop_rule), "off", or "observe" (evaluate the rule, run on)
    stop_rule: str = "variance"  # "variance" (windowed moving variance) or "holdout" (self-validation)
    holdout: float = 0.05  # with stop_rule="holdout": fraction of the observed pixels left out of the fit
    stop_window: int = 100
    stop_patience: int = 400
    stop_start: int = 0  # the rule's minima before this iteration are not taken (see stopping.py)
    history_every: int = 10
    # Bayesian mode (Cheng et al., CVPR 2019): SGLD noise on the weights after each Adam step,
    # samples averaged after a burn-in; no early stopping is needed.
    bayes: bool = False
    sgld_noise: float = 2.0  # weight noise std = sgld_noise * lr
    burn_in: float = 0.5  # fraction of the iterations discarded before sampling
    sample_every: int = 10

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "net"}
        out["net"] = {f.name: getattr(self.net, f.name) for f in fields(self.net)}
        return out


def _net(**kw) -> NetConfig:
    return NetConfig(**kw)


_PAPER_SKIP = _net()  # skip 128/128/4, 5 scales, bilinear: 2.2 M parameters on a 32-channel input
# The CPU-friendly network (measured in BENCHMARKS.md): 0.30 M parameters, about 9x cheaper
# per iteration than the paper's at 256x256. Most of the cost of the paper's network is its
# 128-wide full-resolution layers; here the finest scale is 16 wide, and zero padding (fused
# into the convolution) replaces the separate reflection-padding copies.
_FAST_SKIP = _net(
    channels_down=(16, 32, 32, 64, 64),
    channels_up=(16, 32, 32, 64, 64),
    channels_skip=(4, 4, 4, 4, 4),
    pad="zeros",
)
# The fast network is still fitting the image's content for its first thousand iterations
# (measured: its PSNR peak lies past iteration 1500 on every image whose trajectory was recorded
# to the cap or past it: House, bird, butterfly, Heide11 house), but on textured images its
# output variance passes through an early minimum (Baboon, sigma 25: a minimum at iteration 490
# returned 19.30 dB; the fit was at 20.56 dB by iteration 1434 and rising). Its stopping rule
# therefore takes no minimum before this iteration, and none after it that is not lower than
# the early one (stopping.WindowedVariance).
_FAST_STOP_START = 1000

# Started from a classical estimate (input="estimate") the fit has the content by about
# iteration 400 (50 % reconstruction at 256x256 and 512x512, House at sigma 25); no minimum of
# the stopping rule's curve before that.
_ESTIMATE_STOP_START = 400

# Bayesian mode (--bayes) on the fast network: Cheng et al.'s Langevin noise (std 2 x lr on every
# convolution weight, tuned for the paper's network over some 20000 iterations) holds the fast
# network's short fits 1.7-1.8 dB under the plain fit (500 iterations from the estimate: House sigma
# 25 29.86 dB against 31.64; Heide11 house 50 % 34.13 against 35.84). A quarter of lr keeps the
# posterior mean within about 0.1 dB of the plain fit (31.55, 35.72) while the samples still
# spread where the result is wrong (the per-pixel standard deviation correlates 0.39 and 0.23
# with the absolute error). BENCHMARKS.md section 6.
_FAST_SGLD_NOISE = 0.25

#: PRESETS[task_key][preset_name] -> FitConfig
PRESETS: dict[str, dict[str, FitConfig]] = {
    "denoise": {
        "paper": FitConfig(net=_PAPER_SKIP, lr=0.01, iterations=3000, reg_noise_std=1 / 30),
        # Started from non-local means (input="estimate") the fast network passes the noise-started
        # one's quality in a quarter of the iterations (House sigma 25: 31.65 dB at 500, peak 32.11 at
        # 1300; Lena512 30.66 at 500, where the noise start had 29.80 after ~2000; BENCHMARKS.md
        # section 8). 500 iterations keep a 512x512 image under four minutes here.
        # Its stopping rule is self-validation (stop_rule="holdout"): the windowed variance of a fit
        # started from an estimate only rises after the first few hundred iterations and never sees
        # the quality peak (House, --iters 2000: returned 31.61 dB at the cap, peak 32.08 at 1130),
        # while the error on 2 % of the pixels held out of the fit finds it (House, --iters 1500: its
        # minimum at 1141 holds 32.11 dB, peak 32.14 at 820). 2 % rather than 5 % because the
        # held-out pixels are missing from the non-local-means start too: 5 % cost 0.26 dB at
        # iteration 500, 2 % nothing measurable (32.02 dB either way). BENCHMARKS.md section 10.
        # 8 input channels (the estimate's 3 and 5 of noise) rather than 32: 10 % less time per
        # iteration at 512x512 (the perturbation is drawn for every input channel, and the first
        # convolutions read them all) and no loss off-suite (Set5 butterfly, bird, woman, Set14
        # foreman, comic at sigma 25: mean 29.82 dB against 29.79, each within -0.05 / +0.15;
        # BENCHMARKS.md section 14).
        "fast": FitConfig(net=_FAST_SKIP, input="estimate", input_depth=8, lr=0.01, iterations=500,
                          reg_noise_std=1 / 30,
                          stop_rule="holdout", holdout=0.02, stop_patience=200,
                          stop_start=_ESTIMATE_STOP_START, sgld_noise=_FAST_SGLD_NOISE),
    },
    "dejpeg": {
        # The paper's JPEG example (snail): a light skip net, 2400 iterations.
        "paper": FitConfig(
            net=_net(
                channels_down=(8, 16, 32, 64, 128),
                channels_up=(8, 16, 32, 64, 128),
                channels_skip=(0, 0, 0, 4, 4),
            ),
            input_depth=3,
            iterations=2400,
            reg_noise_std=1 / 30,
        ),
        "fast": FitConfig(net=_FAST_SKIP, iterations=2000, reg_noise_std=1 / 30,
                          stop_start=_FAST_STOP_START, sgld_noise=_FAST_SGLD_NOISE),
    },
    "sr": {
        "paper": FitConfig(net=_PAPER_SKIP, lr=0.01, iterations=2000, reg_noise_std=0.03, ema=0.0),
        # Started from a classical estimate that agrees with the data (estimates.regularised_upscale:
        # back-projection through the Lanczos operator with 8x8 DCT thresholding, then a total-variation
        # refinement; Set5 x4 30.10 dB Y alone) the fit adds 0.06-0.50 dB in 500 iterations: Set5 x4
        # 30.33 dB, 54-70 s per 228-288 px image and 255 s for the 512x512 baby, where the noise
        # start took 2000 iterations (198-971 s) for 29.87 (BENCHMARKS.md section 15). The noise start
        # still draws the sharpest edges (butterfly 26.09 against 25.34) but loses more on smooth
        # images (baby 31.11 against 33.04).
        # The raw outputs jitter with the input perturbation; their running average was 0.8-1.65 dB
        # better at every point of the noise-started fit (section 9), and is kept, with a warm-up:
        # at a plain 0.99 the first (random) outputs still weighed some 10 % at iteration 235, where
        # the 512x512 baby's average scored 28.82 dB two minutes in (33.03 by its end); with the
        # warm-up it holds 32.93 there, and Set5's mean with every image cut at two minutes is 30.31.
        "fast": FitConfig(net=_FAST_SKIP, input="estimate", lr=0.01, iterations=500, reg_noise_std=0.03, ema=0.99,
                          ema_warmup=10, stop_start=_ESTIMATE_STOP_START, sgld_noise=_FAST_SGLD_NOISE),
    },
    "sr8": {
        "paper": FitConfig(net=_PAPER_SKIP, lr=0.01, iterations=4000, reg_noise_std=0.05, ema=0.0),
        # Averaging helps less at x8 but does not hurt: at 1000 / 3000 iterations butterfly 18.93 / 19.05
        # averaged against 18.57 / 19.02 raw, bird 24.02 / 24.41 against 23.46 / 24.30 (RGB).
        "fast": FitConfig(net=_FAST_SKIP, lr=0.01, iterations=3000, reg_noise_std=0.05, ema=0.99,
                          stop_start=_FAST_STOP_START, sgld_noise=_FAST_SGLD_NOISE),
    },
    "inpaint": {
        # Text inpainting (kate): skip [128]*5 with 128-wide skips, nearest upsampling.
        "paper": FitConfig(
            net=_net(channels_skip=(128,) * 5, upsample="nearest"),
            iterations=6000,
            reg_noise_std=0.03,
            ema=0.0,
        ),
        "fast": FitConfig(
            net=replace(_FAST_SKIP, channels_skip=(16, 16, 16, 16, 16), upsample="nearest"),
            iterations=3000,
            reg_noise_std=0.03,
            ema=0.0,
            stop_start=_FAST_STOP_START,
            sgld_noise=_FAST_SGLD_NOISE,
        ),
    },
    "hole": {
        # Large holes (vase): meshgrid input, hourglass without skips, nearest upsampling.
        "paper": FitConfig(
            net=_net(kind="hourglass", channels_skip=(0,) * 5, upsample="nearest"),
            input="meshgrid",
            input_depth=2,
            iterations=5000,
            reg_noise_std=0.03,
            ema=0.0,
        ),
        "fast": FitConfig(
            net=replace(_FAST_SKIP, kind="hourglass", channels_skip=(0,) * 5, upsample="nearest"),
            input="meshgrid",
            input_depth=2,
            iterations=2500,
            reg_noise_std=0.03,
            ema=0.0,
            stop_start=_FAST_STOP_START,
            sgld_noise=_FAST_SGLD_NOISE,
        ),
    },
    "reconstruct": {
        # Restoration with 50 % of pixels dropped: lr 0.001, 11000 iterations.
        "paper": FitConfig(net=_PAPER_SKIP, lr=0.001, iterations=11000, reg_noise_std=0.03, ema=0.0),
        # From a noise input the fast network was still rising after 3000 iterations at 512x512,
        # 2-6 dB under biharmonic inpainting. Starting from the biharmonic fill it is near its
        # plateau by iteration 400 (BENCHMARKS.md section 8); the start is now that fill refined in
        # the 8x8 DCT (estimates.sparse_fill); the fit ends 0.02-0.47 dB under that start on
        # Heide11, scored on every pixel (section 13). 400 iterations: from 400 to 500 the
        # network's output rose 0.00-0.42 dB off-suite (grey Set5 /
        # Set14, 50 % dropped: butterfly 0.00, zebra 0.08, foreman 0.14, bird 0.42; the results with
        # the known pixels put back, butterfly 29.94 / 29.92, bird 40.25 / 40.49) for a quarter more
        # time, and 500 took 244-288 s at 512x512 on session 10's machine. A light input
        # perturbation (0.01 against 0.03: +0.4 dB on house, +0.6 on hill, -0.1 on peppers256;
        # the fill is an image, not a code) and a short average (0.9: less lag at this cap).
        "fast": FitConfig(net=_FAST_SKIP, input="estimate", lr=0.01, iterations=400, reg_noise_std=0.01, ema=0.9,
                          stop_start=_ESTIMATE_STOP_START, sgld_noise=_FAST_SGLD_NOISE),
    },
    "deblur": {
        "paper": FitConfig(net=_PAPER_SKIP, lr=0.01, iterations=3000, reg_noise_std=0.03),
        "fast": FitConfig(net=_FAST_SKIP, lr=0.01, iterations=2000, reg_noise_std=0.03,
                          stop_start=_FAST_STOP_START, sgld_noise=_FAST_SGLD_NOISE),
    },
    "flash": {
        # Flash / no-flash: the flash image is the input; lr 0.1, 600 iterations, no perturbation.
        "paper": FitConfig(net=_PAPER_SKIP, input="image", lr=0.1, iterations=600, reg_noise_std=0.0, ema=0.0),
        "fast": FitConfig(net=_FAST_SKIP, input="image", lr=0.1, iterations=600, reg_noise_std=0.0, ema=0.0,
                          sgld_noise=_FAST_SGLD_NOISE),
    },
}

PRESET_NAMES = ("fast", "paper")


def get_preset(task_key: str, name: str) -> FitConfig:
    """The :class:`FitConfig` for a task table and preset name."""
    from .errors import DeepPriorError

    if name not in PRESET_NAMES:
        raise DeepPriorError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return PRESETS[task_key][name]
