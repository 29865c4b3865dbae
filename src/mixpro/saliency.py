"""Model-free static saliency detectors in torch (what SaliencyMix centres its boxes on).

* :func:`fine_grained_saliency` — an exact port of OpenCV-contrib's
  ``cv2.saliency.StaticSaliencyFineGrained`` (Montabone & Soto, 2010), the detector of the
  released SaliencyMix code.
* :func:`spectral_residual_saliency` — Hou & Zhang (2007) as OpenCV-contrib's
  ``StaticSaliencySpectralResidual`` computes it (close, not bit-exact; see its docstring).

Both take a batch ``(B, C, H, W)`` of pixel values on the 0..255 scale (``uint8``, or a float
or integer tensor; floats are rounded to the nearest integer, ties to even, and every value is
clamped to 0..255, as OpenCV's conversion to 8 bits does), with ``C`` = 1 (grey) or 3, and
return ``(B, H, W)`` float32 maps in [0, 1]. They run on the images' device, vectorised over
the batch (no loop over samples), without gradients.

**Grey conversion.** OpenCV converts a 3-channel image with ``COLOR_BGR2GRAY``, i.e. the
weights ``0.114, 0.587, 0.299`` applied to channels 0, 1, 2 (in 15-bit fixed point:
``(3735·c0 + 19235·c1 + 9798·c2 + 2¹⁴) >> 15``). SaliencyMix hands OpenCV RGB-ordered arrays,
so it computes ``0.114·R + 0.587·G + 0.299·B``. Here ``channel_order='rgb'`` (default) reads
the channels as R, G, B and uses the proper luma ``0.299·R + 0.587·G + 0.114·B``;
``channel_order='bgr'`` applies OpenCV's weights to the channels in the order given (what
``cvtColor(…, COLOR_BGR2GRAY)`` does to the same array; pass it to reproduce SaliencyMix on RGB
images, or OpenCV on BGR ones). One-channel images are grey already.
"""

from __future__ import annotations

import math
import typing
from typing import Literal

import torch
import torch.nn.functional as F

from . import _checks

__all__ = ["CHANNEL_ORDERS", "FINE_GRAINED_SCALES", "fine_grained_saliency",
           "spectral_residual_saliency"]

ChannelOrder = Literal["rgb", "bgr"]
Overflow = Literal["clamp", "wrap"]
CHANNEL_ORDERS: tuple[str, ...] = typing.get_args(ChannelOrder)
OVERFLOWS: tuple[str, ...] = typing.get_args(Overflow)

#: Half-widths ``n`` of the surround windows (rows ``y-n+1 … y+n``, columns ``x-n+1 … x+n``).
FINE_GRAINED_SCALES: tuple[int, ...] = (12, 24, 48, 28, 56, 112)

# OpenCV's COLOR_BGR2GRAY for 8-bit images: 15-bit fixed-point weights of channels B, G, R
# (they sum to 2**15), rounded half up
_GREY_SHIFT = 15
_GREY_B, _GREY_G, _GREY_R = 3735, 19235, 9798


# ------------------------------------------------------------------------------------------
# Shared steps
# ------------------------------------------------------------------------------------------


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """Validated ``(B, C, H, W)`` 0..255 images as int32 (floats rounded, all clamped)."""
    if not isinstance(images, torch.Tensor):
        raise _checks.ArgumentTypeError(
            "images", f"must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise _checks.ArgumentError(
            "images", f"must have shape (B, C, H, W), got {tuple(images.shape)}")
    b, c, h, w = images.shape
    if c not in (1, 3):
        raise _checks.ArgumentError(
            "images", f"must have 1 (grey) or 3 channels for a saliency map, got {c}")
    if min(b, h, w) < 1:
        raise _checks.ArgumentError("images", f"must not be empty, got {tuple(images.shape)}")
    if images.dtype == torch.bool or images.is_complex():
        raise _checks.ArgumentTypeError(
            "images", f"must be a real floating or integer tensor, got {images.dtype}")
    x = images.detach()
    if x.dtype.is_floating_point:
        x = x.float().round()  # half to even, as OpenCV's saturate_cast
    return x.clamp(0, 255).to(torch.int32)


def _grey(pixels: torch.Tensor, channel_order: str) -> torch.Tensor:
    """``(B, C, H, W)`` int32 0..255 -> ``(B, H, W)`` int32 grey, OpenCV's 8-bit BGR2GRAY."""
    if pixels.shape[1] == 1:
        return pixels[:, 0]
    c0, c1, c2 = pixels.unbind(1)
    blue, green, red = (c0, c1, c2) if channel_order == "bgr" else (c2, c1, c0)
    acc = blue * _GREY_B + green * _GREY_G + red * _GREY_R + (1 << (_GREY_SHIFT - 1))
    return acc >> _GREY_SHIFT


def _reflect101(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """Source index of each of the ``size + 2·pad`` padded positions under OpenCV's
    ``BORDER_REFLECT_101`` (``gfedcb|abcdefgh|gfedcba``; a 1-pixel axis repeats its pixel)."""
    idx = torch.arange(-pad, size + pad)
    if size == 1:
        return torch.zeros_like(idx).to(device)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx).to(device)


def _separable(x: torch.Tensor, kernel: list[float] | list[int]) -> torch.Tensor:
    """``Σ k_i k_j x`` over an odd ``len(kernel)`` square window with reflect-101 borders;
    ``x`` is ``(B, H, W)``, any dtype the kernel's products fit (exact for integers)."""
    r = len(kernel) // 2
    h, w = x.shape[-2:]
    rows = x.index_select(1, _reflect101(h, r, x.device))
    x = sum(k * rows[:, i:i + h] for i, k in enumerate(kernel))
    cols = x.index_select(2, _reflect101(w, r, x.device))
    return sum(k * cols[:, :, i:i + w] for i, k in enumerate(kernel))


def _blur3(grey: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``GaussianBlur(grey, (3, 3), 0)`` of 8-bit images, bit-exact: the kernel
    ``[1, 2, 1]/4`` per axis, reflect-101 borders, rounded half up (OpenCV's fixed point:
    exact here, as every intermediate is a multiple of 1/16). ``(B, H, W)`` int32."""
    return (_separable(grey, [1, 2, 1]) + 8) >> 4


def _two_sum_trunc_255(q: torch.Tensor) -> torch.Tensor:
    """``trunc(255·q)`` of float32 ``q >= 0`` computed exactly (the product in double, as
    C++ ``255. * q``) with float32 arithmetic only, so that it runs on every device.

    ``255·q = 256·q − q``: ``256·q`` is exact, and Knuth's TwoSum gives the rounded
    difference ``s`` and its exact error ``e``. Integers are floats, so ``trunc(s + e)`` is
    ``trunc(s)`` unless ``s`` is an integer and ``e < 0``.
    """
    a = q * 256.0
    s = a - q
    bb = s - a
    e = (a - (s - bb)) + (-q - bb)
    t = s.trunc()
    return torch.where((t == s) & (e < 0), t - 1, t).to(torch.int32)


# ------------------------------------------------------------------------------------------
# Fine-grained static saliency (Montabone & Soto), OpenCV-contrib's StaticSaliencyFineGrained
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def fine_grained_saliency(
    images: torch.Tensor,
    *,
    channel_order: ChannelOrder = "rgb",
    overflow: Overflow = "clamp",
) -> torch.Tensor:
    """Fine-grained static saliency, an exact torch port of OpenCV-contrib's
    ``StaticSaliencyFineGrained().computeSaliency`` (the detector SaliencyMix uses).

    Args:
        images: ``(B, C, H, W)`` pixel values on the 0..255 scale, ``C`` = 1 or 3 (``uint8``,
            or floats holding integers: floats are rounded, ties to even, and clamped).
        channel_order: how a 3-channel image is read for the grey conversion (module
            docstring): ``'rgb'`` (default) ``0.299·R + 0.587·G + 0.114·B``; ``'bgr'``
            OpenCV's ``COLOR_BGR2GRAY`` on the channels as given.
        overflow: step 5 below can exceed 255; ``'clamp'`` (default) saturates
            it; ``'wrap'`` keeps the low byte, as OpenCV's unchecked cast does on x86-64 and
            AArch64 builds (``256 → 0``), for bit-equality with OpenCV.

    Returns:
        ``(B, H, W)`` float32 in [0, 1] on the images' device: the 8-bit map divided by 255
        (as OpenCV ≥ 3.4.3 returns it, computed as ``v · float32(1/255)``).

    The steps, per image (all of them exact integer or IEEE float32 arithmetic, as OpenCV's):

    1. grey ``G`` (``channel_order``), then two 3×3 Gaussian blurs (``[1, 2, 1]/4`` per axis,
       reflect-101 border), each rounded to 8 bits;
    2. for each ``n`` in :data:`FINE_GRAINED_SCALES` and each pixel: the window of rows
       ``y-n+1 … y+n`` and columns ``x-n+1 … x+n`` clamped to the image (box sums of the
       integral image); surround mean ``μ = float32(Σwindow − G) / float32(area − 1)``;
    3. ``on = trunc(G − μ)`` where positive, else 0, ``off = trunc(μ − G)`` likewise;
    4. ``ON = Σ_n on``, ``OFF = Σ_n off``; ``ON' = trunc(255 · float32(ON / max ON))``
       (per image; 0 where ``max ON`` is 0), ``OFF'`` likewise;
    5. ``S = ⌊255·(ON' + OFF') / max(max ON', max OFF')⌋`` (0 for a flat image), which can
       exceed 255 where a pixel is both on and off at different scales: ``overflow``.

    OpenCV sums the integral image in float32, which is exact while an image's pixel sum stays
    below 2²⁴ (every 8-bit image up to 256×256 px); the box sums here are exact integers at
    every size, so above that OpenCV may differ in the last float bits of ``μ``.
    """
    channel_order = _checks.choice(channel_order, "channel_order", CHANNEL_ORDERS)
    overflow = _checks.choice(overflow, "overflow", OVERFLOWS)
    grey = _blur3(_blur3(_grey(_pixels(images), channel_order)))
    b, h, w = grey.shape
    dev = grey.device
    integral = F.pad(grey.to(torch.int64).cumsum(1).cumsum(2), (1, 0, 1, 0))  # (B, H+1, W+1)
    g = grey.float()
    on = torch.zeros(b, h, w, dtype=torch.int32, device=dev)
    off = torch.zeros_like(on)
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    for n in FINE_GRAINED_SCALES:
        y1, y2 = (ys - n + 1).clamp(0, h), (ys + n + 1).clamp(0, h)
        x1, x2 = (xs - n + 1).clamp(0, w), (xs + n + 1).clamp(0, w)
        rows = integral.index_select(1, y2) - integral.index_select(1, y1)  # (B, H, W+1)
        window = rows.index_select(2, x2) - rows.index_select(2, x1)  # (B, H, W)
        area = (y2 - y1)[:, None] * (x2 - x1)[None, :] - 1  # 0 only for a 1×1 image: NaN, off
        mean = (window - grey).float() / area.float()
        d_on, d_off = g - mean, mean - g
        on += torch.where(d_on > 0, d_on.trunc(), 0.0).to(torch.int32)
        off += torch.where(d_off > 0, d_off.trunc(), 0.0).to(torch.int32)

    def normalise(m: torch.Tensor) -> torch.Tensor:
        top = m.amax((1, 2), keepdim=True)
        q = m.float() / top.float().clamp_min(1.0)
        return torch.where(top > 0, _two_sum_trunc_255(q), 0)

    on, off = normalise(on), normalise(off)
    top = torch.maximum(on.amax((1, 2), keepdim=True), off.amax((1, 2), keepdim=True))
    s = torch.where(top > 0, (255 * (on + off)).div(top.clamp_min(1), rounding_mode="floor"), 0)
    s = s.clamp_max(255) if overflow == "clamp" else s & 255
    return s.float() * torch.tensor(1.0 / 255.0, dtype=torch.float32, device=dev)


# ------------------------------------------------------------------------------------------
# Spectral residual (Hou & Zhang), as OpenCV-contrib's StaticSaliencySpectralResidual
# ------------------------------------------------------------------------------------------


def _gaussian_kernel(size: int, sigma: float) -> list[float]:
    taps = [math.exp(-((i - size // 2) ** 2) / (2.0 * sigma * sigma)) for i in range(size)]
    total = sum(taps)
    return [t / total for t in taps]


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise _checks.ArgumentError("size", f"must be an int >= 2, got {size!r}")
    return size


@torch.no_grad()
def spectral_residual_saliency(
    images: torch.Tensor,
    *,
    channel_order: ChannelOrder = "rgb",
    size: int = 64,
) -> torch.Tensor:
    """Spectral-residual saliency (Hou & Zhang, CVPR 2007) with OpenCV-contrib's steps.

    Args:
        images: ``(B, C, H, W)`` pixel values on the 0..255 scale, ``C`` = 1 or 3 (as
            :func:`fine_grained_saliency`).
        channel_order: grey conversion of 3-channel images (module docstring).
        size: side of the square image the spectrum is taken of (OpenCV: 64).

    Returns:
        ``(B, H, W)`` float32 in [0, 1] on the images' device.

    Steps: 8-bit grey; bilinear resize to ``size × size`` (half-pixel centres, no
    anti-aliasing, rounded to 8 bits, as OpenCV's ``INTER_LINEAR_EXACT``); 2-D FFT (amplitude
    ``A``, phase ``φ``); ``L = log(A + 1)``; residual ``R = L − box3×3(L)`` (reflect-101);
    inverse FFT of ``exp(R)·e^{iφ}``; its magnitude blurred by a 5×5 Gaussian of σ = 8
    (reflect-101), **then** squared; divided by its maximum; bilinear resize back to ``H × W``.

    Not bit-exact with OpenCV: OpenCV works in float64 and takes the phase with its
    ``cartToPolar`` (accurate to about 0.3°), and its 8-bit resize uses fixed-point weights;
    this runs in float32 with the exact phase (``tests/test_core_saliencymix.py`` measures the
    difference: correlation > 0.999, the same peak, |Δ| < 0.015 on its test images).
    """
    channel_order = _checks.choice(channel_order, "channel_order", CHANNEL_ORDERS)
    size = _check_size(size)
    grey = _grey(_pixels(images), channel_order).float()
    h, w = grey.shape[-2:]
    small = F.interpolate(grey[:, None], size=(size, size), mode="bilinear",
                          align_corners=False).round().clamp(0, 255)[:, 0]
    spectrum = torch.fft.fft2(small)
    log_amp = torch.log1p(spectrum.abs())
    residual = log_amp - _separable(log_amp, [1.0 / 3.0] * 3)
    back = torch.fft.ifft2(torch.polar(residual.exp(), spectrum.angle())).abs()
    sal = _separable(back, _gaussian_kernel(5, 8.0)).square()
    sal = sal / sal.amax((1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    out = F.interpolate(sal[:, None], size=(h, w), mode="bilinear", align_corners=False)
    return out[:, 0].clamp(0, 1)
