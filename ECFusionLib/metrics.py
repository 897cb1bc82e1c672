"""Image-fusion quality metrics for 2D grey images on the 0-255 scale.

Conventions (A and B are the sources, F the fused image; all H x W float arrays, 0-255):
- ``mi``: MI(A,F) + MI(B,F), natural log (nats), 256-bin joint histograms of the rounded values.
- ``qabf``: Xydeas-Petrovic edge transfer (Sobel, L=1, Tg=0.9994, kg=-15, Dg=0.5, Ta=0.9879, ka=-22, Da=0.8).
- ``vif``: VIFF of Han et al. 2013 (4 scales, weights [1, 0, 0.15, 1]/2.15, noise variance 0.005*255^2;
  images too small for the coarse scales use the scales that fit, weights renormalised).
- ``ssim``: mean of SSIM(A,F) and SSIM(B,F), Gaussian 11x11 window, sigma 1.5, L = 255.
- ``qcb``: Chen-Blum (DoG contrast-sensitivity filter, local contrast with Gaussians of sigma 2 and 4).
- ``qcv``: Chen-Varshney (16x16 windows, alpha = 5); lower is better.
- ``bone_kept`` (CT-MRI), ``hot_spots_kept`` (PET/SPECT-MRI): image checks, fused / source brightness where the
  source is salient (1.0 = kept, target >= 0.95); ``hot_colour_kept``: 3D check of a pseudocolour hot lesion;
  ``banding``: slice-to-slice banding (mean |second difference| across slices).
- ``en`` entropy (bits), ``sd`` standard deviation, ``sf`` spatial frequency, ``ag`` average gradient, of F.
For PET/SPECT, A is the Y of the functional image and F the Y of the fused RGB image.
Qcb and Qcv first stretch each image to 0-255 (min-max), as the reference MATLAB code does;
a constant image stays constant (0).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve
from skimage.metrics import structural_similarity

METRICS = ("MI", "Qabf", "VIF", "SSIM", "Qcb", "Qcv", "EN", "SD", "SF", "AG")
LOWER_IS_BETTER = {"Qcv"}
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
_SOBEL_Y = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float64)


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _filter(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'same'-size correlation with zero padding (MATLAB filter2(k, img, 'same'))."""
    return ndimage.correlate(img, kernel, mode="constant", cval=0.0)


def _gaussian(size: int, sigma: float) -> np.ndarray:
    r = (size - 1) / 2.0
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return g / g.sum()


def _stretch(img: np.ndarray) -> np.ndarray:
    lo, hi = img.min(), img.max()
    return np.zeros_like(img) if hi <= lo else np.rint((img - lo) / (hi - lo) * 255.0)


# ---------------------------------------------------------------- information / statistics
def _mi_pair(x: np.ndarray, y: np.ndarray) -> float:
    h, _, _ = np.histogram2d(np.rint(x).ravel(), np.rint(y).ravel(), bins=256, range=[[-0.5, 255.5], [-0.5, 255.5]])
    p = h / h.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / (px @ py)[nz])))


def mi(a, b, f) -> float:
    a, b, f = _f64(a), _f64(b), _f64(f)
    return _mi_pair(a, f) + _mi_pair(b, f)


def en(f) -> float:
    h, _ = np.histogram(np.rint(_f64(f)), bins=256, range=(-0.5, 255.5))
    p = h[h > 0] / h.sum()
    return float(-np.sum(p * np.log2(p)))


def sd(f) -> float:
    return float(np.std(_f64(f)))


def sf(f) -> float:
    f = _f64(f)
    rf = np.mean(np.diff(f, axis=1) ** 2)
    cf = np.mean(np.diff(f, axis=0) ** 2)
    return float(np.sqrt(rf + cf))


def ag(f) -> float:
    f = _f64(f)
    gx = np.diff(f, axis=1)[:-1, :]
    gy = np.diff(f, axis=0)[:, :-1]
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


def ssim(a, b, f) -> float:
    kw = dict(data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    a, b, f = _f64(a), _f64(b), _f64(f)
    return 0.5 * (structural_similarity(a, f, **kw) + structural_similarity(b, f, **kw))


# ---------------------------------------------------------------- Qabf
def _sobel_grad_angle(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = _filter(img, _SOBEL_X)
    gy = _filter(img, _SOBEL_Y)
    g = np.sqrt(gx * gx + gy * gy)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(gx == 0, np.pi / 2, np.arctan(gy / np.where(gx == 0, 1, gx)))
    return g, angle


def _edge_preservation(g_s, a_s, g_f, a_f) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_s > g_f, g_f / g_s, g_s / g_f)
    ratio = np.where((g_s == 0) | (g_f == 0), 0.0, ratio)
    orient = 1.0 - np.abs(a_s - a_f) / (np.pi / 2)
    qg = 0.9994 / (1 + np.exp(-15 * (ratio - 0.5)))
    qa = 0.9879 / (1 + np.exp(-22 * (orient - 0.8)))
    return qg * qa


def qabf(a, b, f) -> float:
    ga, aa = _sobel_grad_angle(_f64(a))
    gb, ab = _sobel_grad_angle(_f64(b))
    gf, af = _sobel_grad_angle(_f64(f))
    q_af = _edge_preservation(ga, aa, gf, af)
    q_bf = _edge_preservation(gb, ab, gf, af)
    den = np.sum(ga + gb)
    return float(np.sum(q_af * ga + q_bf * gb) / den) if den > 0 else 0.0


# ---------------------------------------------------------------- VIFF (Han et al. 2013)
def _vif_maps(ref: np.ndarray, dist: np.ndarray, noise_var: float):
    """Per scale: (VID, VIND, g) maps of the distorted image ``dist`` against ``ref``."""
    out = []
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        win = _gaussian(n, n / 5.0)
        if scale > 1:
            if min(ref.shape) < n:
                break
            ref = fftconvolve(ref, win, mode="valid")[::2, ::2]
            dist = fftconvolve(dist, win, mode="valid")[::2, ::2]
        if min(ref.shape) < n:  # image too small for this scale (and the coarser ones)
            break
        mu1 = fftconvolve(ref, win, mode="valid")
        mu2 = fftconvolve(dist, win, mode="valid")
        s1 = np.maximum(fftconvolve(ref * ref, win, mode="valid") - mu1 * mu1, 0)
        s2 = np.maximum(fftconvolve(dist * dist, win, mode="valid") - mu2 * mu2, 0)
        s12 = fftconvolve(ref * dist, win, mode="valid") - mu1 * mu2
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        low1 = s1 < 1e-10
        g[low1] = 0
        sv[low1] = s2[low1]
        s1[low1] = 0
        low2 = s2 < 1e-10
        g[low2] = 0
        sv[low2] = 0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0
        sv = np.maximum(sv, 1e-10)
        vid = np.log10(1 + g * g * s1 / (sv + noise_var))
        vind = np.log10(1 + s1 / noise_var)
        out.append((vid, vind, g))
    return out


def vif(a, b, f) -> float:
    noise_var = 0.005 * 255 * 255
    weights = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15
    ma = _vif_maps(_f64(a), _f64(f), noise_var)
    mb = _vif_maps(_f64(b), _f64(f), noise_var)
    c = 1e-7
    per_scale = []
    for (vid_a, vind_a, g_a), (vid_b, vind_b, g_b) in zip(ma, mb):
        use_a = g_a < g_b
        vid = np.where(use_a, vid_a, vid_b)
        vind = np.where(use_a, vind_a, vind_b)
        per_scale.append(np.sum(vid + c) / np.sum(vind + c))
    w = weights[: len(per_scale)]  # small images: the scales that fit, weights renormalised
    return float(np.sum(np.array(per_scale) * w) / w.sum()) if w.sum() > 0 else 0.0


# ---------------------------------------------------------------- Chen-Blum and Chen-Varshney
def _freq_radius(h: int, w: int, scale_u: float, scale_v: float) -> np.ndarray:
    v, u = np.meshgrid(np.linspace(-0.5, 0.5, h) * scale_v, np.linspace(-0.5, 0.5, w) * scale_u, indexing="ij")
    return np.sqrt(u * u + v * v)


def _freq_filter(img: np.ndarray, response: np.ndarray) -> np.ndarray:
    return np.real(np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(img)) * response)))


def qcb(a, b, f) -> float:
    return _qcb_from_contrast(qcb_contrast(a), qcb_contrast(b), qcb_contrast(f))


def qcb_contrast(img) -> np.ndarray:
    """Chen-Blum masked contrast map of one image (H x W, 0-255): reuse it for A and B when scoring many F."""
    img = _stretch(_f64(img))
    h, w = img.shape
    r = _freq_radius(h, w, w / 30.0, h / 30.0)
    csf = np.exp(-((r / 15.3870) ** 2)) - 0.7622 * np.exp(-((r / 1.3456) ** 2))
    x = _freq_filter(img, csf)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.abs(_filter(x, _gaussian(31, 2.0)) / _filter(x, _gaussian(31, 4.0)) - 1)
        return c**3 / (c**2 + 1e-4)


def qcb_cached(ca: np.ndarray, cb: np.ndarray, f) -> float:
    """``qcb(a, b, f)`` from the contrast maps ``qcb_contrast(a)``, ``qcb_contrast(b)`` (same value, 1/3 the time)."""
    return _qcb_from_contrast(ca, cb, qcb_contrast(f))


def _qcb_from_contrast(ca, cb_, cf) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        q_af = np.where(ca < cf, ca / cf, cf / ca)
        q_bf = np.where(cb_ < cf, cb_ / cf, cf / cb_)
        lam_a = ca * ca / (ca * ca + cb_ * cb_)
        q = lam_a * q_af + (1 - lam_a) * q_bf
    q = q[np.isfinite(q)]
    return float(q.mean()) if q.size else 0.0


def qcv(a, b, f) -> float:
    a, b, f = (_stretch(_f64(x)) for x in (a, b, f))
    h, w = a.shape
    win, alpha = 16, 5

    def grad(img):
        gx, gy = _filter(img, _SOBEL_X), _filter(img, _SOBEL_Y)
        return np.sqrt(gx * gx + gy * gy)

    def window_sum(x):
        hh, ww = (x.shape[0] // win) * win, (x.shape[1] // win) * win
        return x[:hh, :ww].reshape(hh // win, win, ww // win, win).sum(axis=(1, 3))

    lam_a, lam_b = window_sum(grad(a) ** alpha), window_sum(grad(b) ** alpha)
    r = _freq_radius(h, w, w / 8.0, h / 8.0)
    theta_m = 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))
    d_a = window_sum(_freq_filter(a - f, theta_m) ** 2) / win**2
    d_b = window_sum(_freq_filter(b - f, theta_m) ** 2) / win**2
    den = np.sum(lam_a + lam_b)
    return float(np.sum(lam_a * d_a + lam_b * d_b) / den) if den > 0 else 0.0


_FUNCS = {"MI": mi, "Qabf": qabf, "VIF": vif, "SSIM": ssim, "Qcb": qcb, "Qcv": qcv}
_SINGLE = {"EN": en, "SD": sd, "SF": sf, "AG": ag}


def all_metrics(a, b, f, names=METRICS) -> dict[str, float]:
    """Every metric in ``names`` for sources a, b and fused f (H x W, 0-255)."""
    out = {}
    for name in names:
        out[name] = _FUNCS[name](a, b, f) if name in _FUNCS else _SINGLE[name](f)
    return out


def beats(candidate: dict[str, float], reference: dict[str, float], names=("MI", "Qabf", "VIF", "SSIM", "Qcb", "Qcv")) -> list[str]:
    """Names of the metrics on which ``candidate`` is better than ``reference``."""
    return [n for n in names if (candidate[n] < reference[n] if n in LOWER_IS_BETTER else candidate[n] > reference[n])]


# ---------------------------------------------------------------- image checks (issue 14)
BONE_CT_LEVEL = 200.0  # CT grey level (8-bit, after the CT window) at or above which a pixel counts as bone ...
BONE_MRI_LEVEL = 100.0  # ... where the MRI is below this (dark skull on T1)
HOT_FRACTION = 0.01  # hot spots: the functional image's brightest 1 % (Y)


def bone_kept(ct, mri, fused, ct_level: float = BONE_CT_LEVEL, mri_level: float = BONE_MRI_LEVEL) -> float:
    """CT-MRI "bone kept": mean fused / mean CT over the pixels with CT >= ``ct_level`` and MRI < ``mri_level``.

    Arrays of one shape (2D or 3D), 0-255 (CT after its window, 8-bit grey). 1.0 = the fused image is as bright as
    the CT in bone (a solid skull); the issue's target is >= 0.95. NaN when no pixel is bone.
    """
    ct, mri, fused = _f64(ct), _f64(mri), _f64(fused)
    mask = (ct >= ct_level) & (mri < mri_level)
    return float(fused[mask].mean() / ct[mask].mean()) if mask.any() and ct[mask].mean() > 0 else float("nan")


def hot_mask(functional_y, fraction: float = HOT_FRACTION) -> np.ndarray:
    """The functional image's brightest ``fraction`` of pixels (Y >= its (1 - fraction) quantile; ties included).
    An all-black image has no hot spots (empty mask)."""
    y = _f64(functional_y)
    if not (y > 0).any():
        return np.zeros(y.shape, bool)
    return (y >= np.quantile(y, 1.0 - fraction)) & (y > 0)


def hot_spots_kept(functional_y, fused_y, fraction: float = HOT_FRACTION) -> float:
    """PET/SPECT-MRI "hot spots kept": mean fused Y / mean functional Y over the functional's brightest ``fraction``.

    ``functional_y``: Y (BT.601, 0-255) of the functional image; ``fused_y``: Y of the fused image; same shape.
    1.0 = the hottest uptake is as bright in the fused image as in the PET/SPECT; target >= 0.95. NaN if no hot spot.
    """
    mask = hot_mask(functional_y, fraction)
    y = _f64(functional_y)
    return float(_f64(fused_y)[mask].mean() / y[mask].mean()) if mask.any() else float("nan")


def colour_positions(rgb, table, tolerance: float = 20.0) -> np.ndarray:
    """Read colours back through a colour map: for each RGB (... x 3, 0-255) the position (0-255) of the nearest
    table entry (``table``: 256 x 3, 0-1), or -1 where no entry is within ``tolerance`` (Euclidean, RGB 0-255).

    A grey (232, 232, 232) hot spot under PET-Heat reads back as -1 (no colour of the map is that grey), the map's
    white reads back as 255 and its yellow as ~87.
    """
    rgb = np.asarray(rgb, np.float32).reshape(-1, 3)
    lut = np.asarray(table, np.float32) * 255.0
    out = np.empty(len(rgb), np.int32)
    for start in range(0, len(rgb), 65536):  # chunks: 65536 x 256 distances at a time
        chunk = rgb[start:start + 65536]
        d2 = ((chunk[:, None, :] - lut[None, :, :]) ** 2).sum(-1)
        pos = d2.argmin(1)
        out[start:start + 65536] = np.where(d2[np.arange(len(chunk)), pos] <= tolerance**2, pos, -1)
    return out.reshape(np.shape(rgb)[:-1] if np.ndim(rgb) > 1 else ())


def hot_colour_kept(fused_rgb, functional_rgb, table, mask=None, tolerance: float = 20.0, slack: int = 32) -> float:
    """3D hot-lesion colour check: the fraction of hot voxels whose fused colour still reads as (nearly) as hot.

    ``fused_rgb``, ``functional_rgb``: ... x 3 uint8 (the fused output and the functional image through colour map
    ``table``, 256 x 3, 0-1, on the same grid); ``mask``: the lesion (default: ``hot_mask`` of the functional Y).
    A voxel counts as kept when its fused colour reads back through the map (``colour_positions``, within
    ``tolerance``) at a position >= the functional's own position - ``slack``. With PET-Heat a white lesion that
    comes out grey (232, 232, 232) reads back as no colour of the map: not kept. 1.0 = every hot voxel is shown hot.
    """
    from .colour import luminance

    if mask is None:
        mask = hot_mask(luminance(functional_rgb))
    mask = np.asarray(mask, bool)
    if not mask.any():
        return float("nan")
    f_pos = colour_positions(np.asarray(functional_rgb)[mask], table, tolerance=1e9)  # exact map colours
    o_pos = colour_positions(np.asarray(fused_rgb)[mask], table, tolerance)
    return float(np.mean((o_pos >= 0) & (o_pos >= f_pos - slack)))


def banding(volume, axis: int = 0, mask=None) -> float:
    """Slice-to-slice banding: mean |second difference| of ``volume`` (3D, 0-255) along ``axis`` (the slice axis),
    over ``mask`` (default: voxels whose three neighbours along the axis are not all 0, i.e. not air).

    Compare the fused volume's value with the inputs' (``banding_ratio``): a slice-wise fusion that treats
    neighbouring slices differently adds second differences the inputs do not have.
    """
    v = np.moveaxis(_f64(volume), axis, 0)
    d2 = np.abs(v[2:] - 2 * v[1:-1] + v[:-2])
    if mask is None:
        keep = (v[2:] > 0) | (v[1:-1] > 0) | (v[:-2] > 0)
    else:
        keep = np.moveaxis(np.asarray(mask, bool), axis, 0)[1:-1]
    return float(d2[keep].mean()) if keep.any() else 0.0


def banding_ratio(fused, a, b, axis: int = 0) -> dict[str, float]:
    """Banding of the fused volume and of both inputs along ``axis`` over the same voxels (content in any of the
    three), and ``ratio`` = fused / max(inputs): above 1 the fusion adds slice-to-slice variation."""
    vols = [np.moveaxis(_f64(x), axis, 0) for x in (fused, a, b)]
    content = np.zeros(vols[0].shape, bool)
    for v in vols:
        content |= v > 0
    f, ba, bb = (banding(v, 0, content) for v in vols)
    return {"fused": f, "a": ba, "b": bb, "ratio": f / max(ba, bb) if max(ba, bb) > 0 else float("nan")}


# ---------------------------------------------------------------- 3D measures on real volumes (issue 18)
CS_WINDOW = 7  # in-plane window (pixels) of the structure measure
CS_C2 = (0.03 * 255.0) ** 2  # SSIM's C2 on the 0-255 scale
STRUCTURE_SD = 4.0  # MRI local standard deviation (grey levels, 7x7 in-plane) above which the MRI "has structure"
BRIGHT_QUANTILE = 0.75  # "where the second image is bright": its displayed Y above this quantile of the head's
HEAD_LEVEL = 4.0  # MRI grey level (0-255) above which a voxel is head, not air


def _in_plane_box(ndim: int, axis: int, size: int):
    """Box mean over ``size`` x ``size`` in-plane windows: across the axes other than ``axis`` (3D), or 2D."""
    shape = [size] * ndim
    if ndim == 3:
        shape[axis] = 1
    return lambda v: ndimage.uniform_filter(v, size=shape, mode="reflect")


def structure_map(reference, test, axis: int = 0, size: int = CS_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """SSIM's contrast-structure term between ``test`` and ``reference`` per voxel, and the reference's local SD.

    cs = (2 cov + C2) / (var_ref + var_test + C2), moments over ``size`` x ``size`` in-plane windows (slices
    across ``axis``), C2 = (0.03 * 255)^2. Arrays: 2D or 3D, one shape, 0-255. cs is 1 where ``test`` has the
    reference's local structure at any brightness offset and contrast >= the reference's; it falls where the
    structure is flattened (a saturated region), replaced or inverted. Returns (cs, sd_ref), float32.
    """
    r, t = _f64(reference), _f64(test)
    box = _in_plane_box(r.ndim, axis, size)
    mr, mt = box(r), box(t)
    vr = np.maximum(box(r * r) - mr * mr, 0.0)
    vt = np.maximum(box(t * t) - mt * mt, 0.0)
    cov = box(r * t) - mr * mt
    return ((2 * cov + CS_C2) / (vr + vt + CS_C2)).astype(np.float32), np.sqrt(vr).astype(np.float32)


def bone_zone(ct, axis: int = 0, level: float = BONE_CT_LEVEL, size: int = CS_WINDOW) -> np.ndarray:
    """CT bone (>= ``level``, 0-255 after the window) grown by the structure window (``size`` in-plane): where the
    fused image is meant to show the CT, not the MRI (``bone_kept`` measures it); left out of ``anatomy_kept``."""
    shape = [size] * np.ndim(ct)
    if np.ndim(ct) == 3:
        shape[axis] = 1
    return ndimage.maximum_filter(_f64(ct) >= level, size=shape)


def anatomy_head(mri, ct=None, axis: int = 0) -> np.ndarray:
    """Where ``anatomy_kept`` looks: the head (MRI > ``HEAD_LEVEL``, 0-255), and for CT-MRI (``ct``: the CT after
    its window, 0-255, same shape) outside ``bone_zone``, where the fused image is meant to show the CT."""
    head = _f64(mri) > HEAD_LEVEL
    return head if ct is None else head & ~bone_zone(ct, axis)


def anatomy_kept(mri, fused_y, second_y, axis: int = 0, head=None) -> dict[str, float]:
    """"Anatomy kept": mean SSIM contrast-structure (``structure_map``) between the fused luminance and the MRI.

    ``mri``: the MRI as the network saw it (0-255); ``fused_y``: the fused image's Y (0-255); ``second_y``: Y of
    the second image as displayed (colour map + window, or CT window; 0-255); one shape, 2D or 3D, slices across
    ``axis``. Averaged over the head voxels (``head``, default ``anatomy_head``: MRI > 4) where the MRI has
    structure (its local SD > ``STRUCTURE_SD``): "head"; and over those where ``second_y`` is at or above its
    ``BRIGHT_QUANTILE`` in the head: "bright". Compare with ``blend_y`` of the same inputs (``anatomy_vs_blend``).
    """
    mri = _f64(mri)
    cs, sd_mri = structure_map(mri, fused_y, axis)
    head = anatomy_head(mri) if head is None else np.asarray(head, bool)
    mask = head & (sd_mri > STRUCTURE_SD)
    sec = _f64(second_y)
    bright = mask & (sec >= np.quantile(sec[head], BRIGHT_QUANTILE)) if head.any() else mask
    mean = lambda m: float(cs[m].mean()) if m.any() else float("nan")  # noqa: E731
    return {"head": mean(mask), "bright": mean(bright)}


def blend_y(mri, second_y, alpha: float = 0.5) -> np.ndarray:
    """Y of an alpha blend of the MRI shown grey and the second image as displayed (Y is linear in RGB, so the
    blend's Y is the blend of the Ys): what a viewer shows with the second image as a foreground at opacity
    ``alpha``."""
    return (1.0 - alpha) * _f64(mri) + alpha * _f64(second_y)


def blend_rgb(mri, second_rgb, alpha: float = 0.5) -> np.ndarray:
    """The same blend in colour: ... x 3 float (0-255) from the grey MRI (...) and the displayed RGB (... x 3)."""
    return (1.0 - alpha) * _f64(mri)[..., None] + alpha * _f64(second_rgb)


def anatomy_vs_blend(mri, fused_y, second_y, axis: int = 0, head=None) -> dict[str, float]:
    """``anatomy_kept`` of the fused image and of the 50/50 ``blend_y``, and their ratios (fused / blend):
    keys head, bright, blend_head, blend_bright, ratio_head, ratio_bright. For CT-MRI pass ``head`` without
    ``bone_zone`` (there the CT is what must show: ``bone_kept``)."""
    f = anatomy_kept(mri, fused_y, second_y, axis, head)
    b = anatomy_kept(mri, blend_y(mri, second_y), second_y, axis, head)
    return {**f, "blend_head": b["head"], "blend_bright": b["bright"],
            "ratio_head": f["head"] / b["head"], "ratio_bright": f["bright"] / b["bright"]}


def lesion_contrast(rgb, lesion, shell) -> float:
    """Colour distance (Euclidean, RGB 0-255) between the mean colour of ``lesion`` and of ``shell`` (boolean
    masks) in ``rgb`` (... x 3; a grey image may be given as ... with no channel axis)."""
    x = _f64(rgb)
    if x.ndim == np.ndim(lesion):
        x = x[..., None]
    return float(np.linalg.norm(x[np.asarray(lesion, bool)].mean(0) - x[np.asarray(shell, bool)].mean(0)))
