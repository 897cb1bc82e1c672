"""Image-fusion quality metrics for 2D grey images on the 0-255 scale.

Conventions (A and B are the sources, F the fused image; all H x W float arrays, 0-255):
- ``mi``: MI(A,F) + MI(B,F), natural log (nats), 256-bin joint histograms of the rounded values.
- ``qabf``: Xydeas-Petrovic edge transfer (Sobel, L=1, Tg=0.9994, kg=-15, Dg=0.5, Ta=0.9879, ka=-22, Da=0.8).
- ``vif``: VIFF of Han et al. 2013 (4 scales, weights [1, 0, 0.15, 1]/2.15, noise variance 0.005*255^2;
  images too small for the coarse scales use the scales that fit, weights renormalised).
- ``ssim``: mean of SSIM(A,F) and SSIM(B,F), Gaussian 11x11 window, sigma 1.5, L = 255.
- ``qcb``: Chen-Blum (DoG contrast-sensitivity filter, local contrast with Gaussians of sigma 2 and 4).
- ``qcv``: Chen-Varshney (16x16 windows, alpha = 5); lower is better.
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
    a, b, f = (_stretch(_f64(x)) for x in (a, b, f))
    h, w = a.shape
    r = _freq_radius(h, w, w / 30.0, h / 30.0)
    csf = np.exp(-((r / 15.3870) ** 2)) - 0.7622 * np.exp(-((r / 1.3456) ** 2))
    g1, g2 = _gaussian(31, 2.0), _gaussian(31, 4.0)

    def masked_contrast(img):
        x = _freq_filter(img, csf)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.abs(_filter(x, g1) / _filter(x, g2) - 1)
            return c**3 / (c**2 + 1e-4)

    ca, cb_, cf = masked_contrast(a), masked_contrast(b), masked_contrast(f)
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
