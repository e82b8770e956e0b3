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
    holdout: float = 0.05  # fraction of the observed pixels left out of the fit, to measure it on
    # Return whichever of the fit, its classical start (input="estimate") and their blends has the
    # least error on the held-out pixels (fitting.choose_result): never worse than the start.
    select_start: bool = False
    # The fit's shares among which select_start chooses (0 is the start, 1 the fit, others blends);
    # None: the task's choice for its start (tasks.Problem.blend_weights).
    blend_weights: tuple[float, ...] | None = None
    # How many standard errors (of the held-out pixels' paired differences) a candidate's mean error
    # must fall below the start's for select_start to prefer it: 0 takes the least error, however
    # slight its lead; more keeps the start unless the held-out pixels tell the others apart from it.
    choice_margin: float = 0.0
    # The fit's share of what is returned when nothing chooses it (select_start off), the rest
    # being the task's classical estimate (the fit's start, or made to be blended in where the fit
    # draws from noise): 1 returns the fit, 0.5 the even mean of the fit and the estimate;
    # None: the task's share for its start (tasks.Problem.fit_share).
    fit_share: float | None = 1.0
    # > 0: the network draws the image at about this many pixels (its aspect kept, sides padded
    # to the network's multiple) and its output is upscaled bicubically before the data term: a
    # prior for content with no fine detail (a large hole) whose network does not grow with the
    # image. Needs a noise or meshgrid input.
    draw_pixels: int = 0
    # Clip the fit, pixel by pixel, into the range of the task's classical estimates
    # (tasks.Problem.bounds: for inpainting, the least and greatest of the fills there) before it
    # is chosen or blended: it keeps the network's shapes but never a colour no fill proposes.
    bound_fit: bool = False
    # > 0: an image of more pixels is restored from a window around what is missing
    # (tasks.Task.window), reduced to about this many pixels where larger (its aspect kept), and the
    # result upscaled bicubically into the missing pixels (tasks.Task.reduce): for a fill that is
    # mostly low frequencies (a large hole), whose classical fills cost minutes per megapixel. 0: whole.
    work_pixels: int = 0
    stop_window: int = 100
    stop_patience: int = 400
    stop_start: int = 0  # the rule's minima before this iteration are not taken (see stopping.py)
    history_every: int = 10
    # Large images (deepprior.cropfit): with crop_iterations > 0 an image above the fit-whole size is
    # fitted on random crops, crop_batch of crop_size output pixels per step, their rims of
    # crop_trim pixels at cut sides left out of the data term, then restored in one tiled pass.
    # 0: the preset cannot (its input is not an estimate), and large images are fitted tile by tile.
    crop_iterations: int = 0
    crop_size: int = 128
    crop_batch: int = 8
    crop_trim: int = 16
    # Bayesian mode (Cheng et al., CVPR 2019): SGLD noise on the weights after each Adam step,
    # samples averaged after a burn-in; no early stopping is needed.
    bayes: bool = False
    sgld_noise: float = 2.0  # weight noise std = sgld_noise * lr
    burn_in: float = 0.5  # fraction of the iterations discarded before sampling
    sample_every: int = 10

    @property
    def uses_start(self) -> bool:
        """Whether the task's classical estimate is made: the fit starts from it (``input``
        "estimate"), or a fit from noise is blended with it at a fixed share (``fit_share`` < 1)."""
        return self.input == "estimate" or (self.fit_share is not None and self.fit_share < 1)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "net"}
        out["net"] = {f.name: getattr(self.net, f.name) for f in fields(self.net)}
        return out


def _net(**kw) -> NetConfig:
    return NetConfig(**kw)


_PAPER_SKIP = _net()  # skip 128/128/4, 5 scales, bilinear: 2.2 M parameters on a 32-channel input
# The CPU-friendly network: 0.30 M parameters, about 9x cheaper per iteration than the paper's at
# 256x256 for the same quality on denoising. Most of the paper network's cost is its 128-wide
# full-resolution layers; here the finest scale is 16 wide, and zero padding (fused into the
# convolution) replaces the separate reflection-padding copies.
_FAST_SKIP = _net(
    channels_down=(16, 32, 32, 64, 64),
    channels_up=(16, 32, 32, 64, 64),
    channels_skip=(4, 4, 4, 4, 4),
    pad="zeros",
)
# A fit from noise is still drawing the image's content for its first thousand iterations, and on
# textured images (Baboon) the output variance passes through an early, spurious minimum: the
# stopping rule takes no minimum before this iteration (stopping.MinimumRule).
_FAST_STOP_START = 1000
# Started from a classical estimate the fit has the content by about iteration 400.
_ESTIMATE_STOP_START = 400
# Inpainting from a classical fill at lr 0.02: near its plateau by iteration 200.
_FILL_STOP_START = 200
# Bayesian mode on the fast network: a quarter of lr as Langevin noise (the paper's 2 x lr holds the
# short fast fits 1.7-1.8 dB under the plain fit; at 0.25 the posterior mean is within ~0.1 dB).
_FAST_SGLD_NOISE = 0.25

# Steps of the fit on crops that restores an image above the fit-whole size (deepprior.cropfit),
# for upscaling and filling. First chosen on the denoised 12-megapixel photo of BENCHMARKS.md
# (sigma 25), mean PSNR of its four windows: start 34.15 dB; 600 steps 34.82 without the weight
# average, 35.04 with it. The upscale returns its start within 0.01 dB at 600 steps, and its
# 15-minute budget at 16 megapixels has no room for more.
_CROP_ITERATIONS = 600
# Denoising keeps learning longer on sharper content: on the two 12-megapixel photos of
# BENCHMARKS.md the mean window PSNR after 600 / 900 / 1200 / 1500 steps was 34.96 / 35.06 /
# 35.05 / 34.98 dB (four Kodak images) and 33.91 / 33.97 / 34.14 / 34.22 (F16, Lena, Peppers,
# Baboon: a larger enlargement; 34.25 at 1800). 1500 steps take about 4.5 minutes on 2 cores. At
# 1500 the bench's Kodak photo scored 34.60 with BatchNorm settled on 16 crop batches and 34.93 with
# the 256 of cropfit.BN_BATCHES.
_DENOISE_CROP_ITERATIONS = 1500

# Text and hole filling: from the classical fill chosen for the image (tasks.FillStart; for text
# refined by plug-and-play BM3D where the bm3d extra is installed), the fit
# has its content by iteration 200 at lr 0.02 and a short average (0.01 and 0.99 were still
# climbing at 800): 300 iterations returned the same as 500 within 0.02 dB inside the text on the 17
# suite images from the BM3D-refined start, the fit some 20 s shorter; from the unrefined fills (no bm3d
# extra) within 0.05 dB on five (mean -0.01). Stopped, and chosen against its start and
# their blends, on 2 % of the known pixels within 8 pixels of the mask (tasks.near_mask).
_FAST_FILL = FitConfig(
    net=replace(_FAST_SKIP, channels_skip=(16, 16, 16, 16, 16), upsample="nearest"),
    input="estimate",
    input_depth=8,
    lr=0.02,
    iterations=300,
    reg_noise_std=0.03,
    ema=0.9,
    stop_rule="holdout",
    stop_patience=200,
    holdout=0.02,
    stop_start=_FILL_STOP_START,
    select_start=True,
    sgld_noise=_FAST_SGLD_NOISE,
    crop_iterations=_CROP_ITERATIONS,
)

# Every number behind a `fast` value is in BENCHMARKS.md, "Why the presets are what they are".
#: PRESETS[task_key][preset_name] -> FitConfig
PRESETS: dict[str, dict[str, FitConfig]] = {
    "denoise": {
        "paper": FitConfig(net=_PAPER_SKIP, lr=0.01, iterations=3000, reg_noise_std=1 / 30),
        # From a classical estimate (input="estimate": BM3D where installed, else non-local means;
        # tasks.Denoise): the noise start's quality in a quarter of the iterations. 8 input
        # channels (the estimate's 3, 5 of noise): 10 % cheaper than 32, same quality.
        # Self-validation on 2 % of the pixels stops it (the windowed variance cannot see the peak
        # of a fit started from an estimate; more held-out pixels weaken the start) and chooses
        # what is returned (tasks.DENOISE_BLENDS): from BM3D a blend with BM3D beats BM3D. The average's
        # warm-up drops the first, random outputs: without it they still weighed on it at 500
        # (fit 0.18 dB and mean 0.08 dB lower on a 256x256 crop of kodim03).
        "fast": FitConfig(net=_FAST_SKIP, input="estimate", input_depth=8, lr=0.01, iterations=500,
                          reg_noise_std=1 / 30, ema_warmup=10,
                          stop_rule="holdout", holdout=0.02, stop_patience=200,
                          stop_start=_ESTIMATE_STOP_START, sgld_noise=_FAST_SGLD_NOISE,
                          select_start=True,
                          crop_iterations=_DENOISE_CROP_ITERATIONS),
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
        # From the regularised upscale (estimates.regularised_upscale; x4 with the bm3d extra, that
        # upscale refined by plug-and-play BM3D: tasks.SuperResolution.upscaler), 500 iterations: better than
        # 2000 from noise on Set5 x4 in a quarter of the time. The raw outputs jitter with the input
        # perturbation, so their running average is returned; its warm-up lets the first (random)
        # outputs leave the average early, for good previews and early stops. A fixed blend of the
        # fit and its start is returned, the task's share for its start (tasks.SR_FIT_SHARES: the
        # even mean, less of the fit over the BM3D start): above the fit on the tuning
        # sets' mean, where neither held-out low-resolution pixels nor the same fit one scale lower
        # could tell which of them was better (BENCHMARKS.md, "Choosing between the fit and its start").
        "fast": FitConfig(net=_FAST_SKIP, input="estimate", lr=0.01, iterations=500, reg_noise_std=0.03, ema=0.99,
                          ema_warmup=10, stop_start=_ESTIMATE_STOP_START, sgld_noise=_FAST_SGLD_NOISE,
                          crop_iterations=_CROP_ITERATIONS, fit_share=None),
    },
    "sr8": {
        "paper": FitConfig(net=_PAPER_SKIP, lr=0.01, iterations=4000, reg_noise_std=0.05, ema=0.0),
        # From noise: at x8 the classical starts have too little to go on. Averaging helps less
        # than at x4 but does not hurt.
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
        "fast": _FAST_FILL,
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
        # The even mean of a classical start (tasks.START_FILLS: the mean of six fills, leaning on
        # FSR's best mode at half size, tasks.START_LEAD) and a fit from noise drawn at
        # about 128x128 (draw_pixels: a large hole is mostly low frequencies, and the network's
        # cost stays the same at any image size), clipped pixel by pixel into the six fills' range
        # (bound_fit): the network continues the structure around the hole where the fills smear
        # it, and the clip keeps it from the odd wrong-coloured blob (a cyan patch on Set5's baby,
        # 8 dB under the fills' mean unclipped). Fits from the fills' mean, chosen on a copy of
        # the hole elsewhere, lost up to 4 dB inside the hole; from the meshgrid the hourglass drew
        # flat, wrong-coloured blobs (BENCHMARKS.md). With 0 iterations the classical start alone; a
        # check asked for (select_start) holds out a copy of the hole elsewhere whole (holdout).
        # Above 512x512 the hole is filled from a window around it (work_pixels: three times its
        # extent, reduced to 512x512 where larger), so a large photo takes the time of a small one.
        "fast": replace(_FAST_FILL, net=_FAST_SKIP, input="noise", input_depth=32, lr=0.01, iterations=1000,
                        ema=0.99, stop="off", stop_rule="variance", select_start=False, holdout=0.99,
                        crop_iterations=0, fit_share=0.5, draw_pixels=128 * 128, bound_fit=True,
                        work_pixels=512 * 512),
    },
    "reconstruct": {
        # Restoration with 50 % of pixels dropped: lr 0.001, 11000 iterations.
        "paper": FitConfig(net=_PAPER_SKIP, lr=0.001, iterations=11000, reg_noise_std=0.03, ema=0.0),
        # From the sparse-DCT fill (estimates.sparse_fill; plug-and-play BM3D on it with the bm3d
        # extra), near its plateau by iteration 400; from noise the fast network was still rising
        # after 3000. A light input perturbation (the fill is an image, not a code) and a short
        # average (less lag at this cap). The fit alone ends under its start on Heide11 (0.34-0.82
        # dB under the BM3D fill), so it is chosen against it and their blends on 2 % of the known
        # pixels (tasks.RECONSTRUCT_BLENDS), and only where it leads the start by 3 standard errors
        # there: a blend that led by 2.7 still ended under the start (fingerprint), the start the
        # choice ranks being weaker than the one returned (BENCHMARKS.md).
        "fast": FitConfig(net=_FAST_SKIP, input="estimate", lr=0.01, iterations=400, reg_noise_std=0.01, ema=0.9,
                          stop_start=_ESTIMATE_STOP_START, sgld_noise=_FAST_SGLD_NOISE,
                          select_start=True, holdout=0.02, choice_margin=3.0),
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
