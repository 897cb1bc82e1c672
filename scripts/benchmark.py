#!/usr/bin/env python3
"""Speed and memory of the fusion engine against the naive per-slice loop, in one run.

    python scripts/benchmark.py --quick        # 1-2 minutes on 2 CPU cores; ends with speedup_vs_naive=<median ratio>
    python scripts/benchmark.py                # + whole volumes 256x256x180 and 512x512x300 (long on CPU)
    python scripts/benchmark.py --device cuda  # the GPU path (engine) against the naive loop on the same GPU
    python scripts/benchmark.py --quick --load # with the other core kept busy (a Slicer session, a training run)
    python scripts/benchmark.py --registration # rigid MI registration of a 256x256x180 pair: seconds and error

Naive = what research test scripts do: one slice at a time, fp32, eager, full slices, torch.no_grad.
Engine = ECFusionLib.engine.fuse_volume as shipped: precision "auto" (bf16 on GPUs and CPUs with native bf16),
the network's fused-kernel CPU path (network.FusedECFusion on fast_cpu.py kernels) or autocast + batching on GPU, air skipping;
"engine fp32" = the same with --precision fp32.
Weights: the bundled PET-MRI weights (speed does not depend on them; the output differences do).
The headline ratio (head phantom) is robust to a noisy, shared machine: naive and engine runs are interleaved
(ABAB...), each pair gives one ratio, and the median is reported with the spread (min-max) of the pairs; a load
burst then spoils one pair, not the result. The process is tuned as the ``ecfusion`` command tunes it
(``runtime.tune_cpu``).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ECFusionLib.engine import cpu_has_bf16, fuse_volume, make_runner, resolve_device  # noqa: E402
from ECFusionLib.network import count_parameters  # noqa: E402
from ECFusionLib.runtime import tune_cpu  # noqa: E402
from ECFusionLib.tasks import DEVICES  # noqa: E402


# ---------------------------------------------------------------- measurement helpers
def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM
    except OSError:
        pass


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def naive_fuse(model, a: np.ndarray, b: np.ndarray, dev) -> np.ndarray:
    """The reference: one slice at a time, fp32, full slices."""
    out = np.empty_like(a)
    with torch.no_grad():
        for k in range(a.shape[0]):
            ta = torch.from_numpy(a[k]).float().div(127.5).sub(1.0)[None, None].to(dev)
            tb = torch.from_numpy(b[k]).float().div(127.5).sub(1.0)[None, None].to(dev)
            f = model(ta, tb)
            out[k] = ((f[0, 0].float().cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return out


def timed(fn, dev, repeats=1):
    times = []
    result = None
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        result = fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), result


def flops_per_slice(model, size=256) -> float:
    """Multiply-adds for one pair of size x size inputs (fvcore's 'FLOP' convention, as the paper reports)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.float().cpu()(x, x)
    return counter.get_total_flops() / 2


def interleaved(naive, engine, dev, pairs: int):
    """Run naive, engine, naive, engine, ... (``pairs`` of each); returns (ratios naive/engine per pair,
    naive times, engine times, last naive result, last engine result)."""
    ratios, t_naive, t_eng = [], [], []
    ref = res = None
    for _ in range(pairs):
        tn, ref = timed(naive, dev)
        te, res = timed(engine, dev)
        ratios.append(tn / te)
        t_naive.append(tn)
        t_eng.append(te)
    return np.array(ratios), np.array(t_naive), np.array(t_eng), ref, res


def busy_loop(stop):
    x = 0
    while not stop.is_set():
        x += 1


# ---------------------------------------------------------------- test data
def head_pair(size_xyz=(181, 217, 181), spacing=1.0):
    """The demo's phantom MRI and PET (PET resampled onto the MRI grid), mapped to 8 bits like the pipeline."""
    from ECFusionLib.geometry import resample_onto
    from ECFusionLib.intensity import default_window_level, map_functional, map_mri
    from ECFusionLib.phantom import make_phantom
    import SimpleITK as sitk

    ph = make_phantom(size=size_xyz, seed=0, spacing=spacing)
    mri, _ = map_mri(sitk.GetArrayFromImage(ph["MRI"]))
    pet_arr = sitk.GetArrayFromImage(resample_onto(ph["PET"], ph["MRI"]))
    w, l = default_window_level(sitk.GetArrayViewFromImage(ph["PET"]), None, None)
    _, pet_y, _ = map_functional(pet_arr, "PET", None, w, l)
    return pet_y, mri


def scaled_head(shape):
    """A head pair on a grid of ``shape`` (k, H, W): the phantom's FOV resampled to that matrix."""
    k, h, w = shape
    fov = np.array([181.0, 217.0, 181.0])
    return head_pair((w, h, k), spacing=float(np.max(fov / np.array([w, h, k]))))


def benchmark_registration():
    """Rigid registration of the phantom PET onto a 256x256x180 MRI grid, PET moved by a known motion."""
    import SimpleITK as sitk

    from ECFusionLib.phantom import make_phantom
    from ECFusionLib.registration import affine_matrix_lps, register

    ph = make_phantom(size=(256, 256, 180), seed=0, spacing=1.0)  # 256 x 256 x 180 at 1 mm (head fits in 256 mm)
    motion = sitk.Euler3DTransform()
    motion.SetCenter((0.0, 0.0, -5.0))
    motion.SetRotation(*np.deg2rad([10.0, -6.0, 8.0]))
    motion.SetTranslation((12.0, -9.0, 6.0))
    pet = sitk.Resample(ph["PET"], ph["PET"], motion, sitk.sitkLinear, 0.0)
    t = time.perf_counter()
    found = register(ph["MRI"], pet, "rigid")
    seconds = time.perf_counter() - t
    a, b = affine_matrix_lps(found), affine_matrix_lps(motion.GetInverse())
    angle = np.degrees(np.arccos(np.clip((np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2, -1, 1)))
    c = np.array([0.0, 0.0, -5.0, 1.0])
    print(f"rigid registration, MRI 256x256x180 at 1 mm, PET {ph['PET'].GetSize()} at 4 mm, moved by 10/-6/8 deg "
          f"and 12/-9/6 mm: {seconds:.1f} s on {os.cpu_count()} cores; error {angle:.2f} deg, "
          f"{np.linalg.norm((a @ c - b @ c)[:3]):.2f} mm at the head centre")
    return 0


# ---------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about a minute on 2 CPU cores")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--load", action="store_true", help="keep one other core busy during the measurements")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--registration", action="store_true", help="only: time rigid registration of a 256x256x180 pair")
    p.add_argument("--pairs", type=int, help="interleaved naive/engine pairs on the head phantom (default 5, quick 4)")
    args = p.parse_args(argv)
    tune_cpu()
    if args.registration:
        return benchmark_registration()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    from ECFusionLib.tasks import DEFAULT_TASK
    from ECFusionLib.weights import load_model

    model, _ = load_model(DEFAULT_TASK)
    stop = mp.Event()
    loader = None
    if args.load:
        loader = mp.Process(target=busy_loop, args=(stop,), daemon=True)
        loader.start()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {dev}, native bf16 {cpu_has_bf16()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, other core busy: {args.load}")
    print(f"parameters: {count_parameters(model):,}")
    print(f"FLOPs per 256x256 slice pair (multiply-adds, fvcore convention): {flops_per_slice(model) / 1e9:.2f} G")
    model = model.to(dev)

    rng = np.random.default_rng(0)
    sizes = [(256, 3 if args.quick else 10), (512, 2 if args.quick else 5)]
    for size, n in sizes:
        a = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        b = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        naive_fuse(model, a[:1], b[:1], dev)  # warm-up
        t_naive, _ = timed(lambda: naive_fuse(model, a, b, dev), dev)
        fuse_volume(model, a[:1], b[:1], device=str(dev))
        t_eng, (_, info) = timed(lambda: fuse_volume(model, a, b, device=str(dev)), dev)
        fuse_volume(model, a[:1], b[:1], device=str(dev), precision="fp32")
        t_32, _ = timed(lambda: fuse_volume(model, a, b, device=str(dev), precision="fp32"), dev)
        print(f"{size}x{size} (no air): naive {1000 * t_naive / n:.0f} ms/slice, engine {1000 * t_eng / n:.0f} ms/slice "
              f"({info.precision}, batch {info.batch_size}), engine fp32 {1000 * t_32 / n:.0f} ms/slice; "
              f"speed-up {t_naive / t_eng:.2f}x, fp32 {t_naive / t_32:.2f}x")

    # the realistic head: the demo phantom pair, axial slices
    a, b = head_pair()
    if args.quick:
        a, b = a[::6], b[::6]
    air = float(np.mean((a <= 4) & (b <= 4)))
    runner = make_runner(model, device=str(dev))  # as fuse_volume(model, ...) makes it, once for all runs
    reset_peak_rss()
    base = peak_rss_mb()
    t_naive, ref = timed(lambda: naive_fuse(model, a, b, dev), dev)
    rss_naive = peak_rss_mb() - base
    reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_eng, (fused, info) = timed(lambda: fuse_volume(runner, a, b), dev)
    rss_eng = peak_rss_mb() - base
    ratios, t_naives, t_engs, ref, (fused, info) = interleaved(
        lambda: naive_fuse(model, a, b, dev), lambda: fuse_volume(runner, a, b), dev,
        args.pairs or (4 if args.quick else 5))
    t_naive, t_eng = float(np.median(t_naives)), float(np.median(t_engs))
    t_32, (fused_32, _) = timed(lambda: fuse_volume(model, a, b, device=str(dev), precision="fp32"), dev)
    diff_32 = np.abs(fused_32.astype(int) - ref.astype(int))
    diff = np.abs(fused.astype(int) - ref.astype(int))
    head = (a > 4) | (b > 4)
    print(f"head phantom {a.shape[2]}x{a.shape[1]}, {a.shape[0]} slices, background fraction {air:.2f}: naive {t_naive:.1f} s "
          f"({1000 * t_naive / a.shape[0]:.0f} ms/slice), engine {t_eng:.1f} s ({1000 * t_eng / a.shape[0]:.0f} ms/slice, "
          f"{info.precision}, {info.computed_slices} slices computed, {100 * info.computed_fraction:.0f} % of the area)")
    print(f"engine vs naive output: mean |diff| in the head {diff[head].mean():.2f} grey levels, "
          f"99th percentile {np.percentile(diff[head], 99):.0f}, max {diff.max()}")
    print(f"engine fp32: {t_32:.1f} s (speed-up {t_naive / t_32:.2f}x), mean |diff| in the head {diff_32[head].mean():.2f}, "
          f"max {diff_32.max()}")
    print(f"peak RSS above start: naive {rss_naive:.0f} MB, engine {rss_eng:.0f} MB"
          + (f"; peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB" if dev.type == "cuda" else ""))
    print(f"interleaved naive/engine pairs: {len(ratios)}, ratios " + " ".join(f"{r:.2f}" for r in ratios))
    speedup = float(np.median(ratios))
    spread = f"{ratios.min():.2f}-{ratios.max():.2f}"

    if not args.quick:
        for shape in ((180, 256, 256), (300, 512, 512)):
            va, vb = scaled_head(shape)
            reset_peak_rss()
            base = peak_rss_mb()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t_eng, (_, info) = timed(lambda: fuse_volume(model, va, vb, device=str(dev)), dev)
            rss = peak_rss_mb() - base
            cuda_mb = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else 0
            t_nv, _ = timed(lambda: naive_fuse(model, va, vb, dev), dev)
            print(f"volume {shape[2]}x{shape[1]}x{shape[0]}: naive {t_nv:.1f} s, engine {t_eng:.1f} s "
                  f"(speed-up {t_nv / t_eng:.2f}x), engine peak RSS above inputs {rss:.0f} MB"
                  + (f", peak CUDA {cuda_mb:.0f} MB" if cuda_mb else ""))
    if loader is not None:
        stop.set()
        loader.join(timeout=5)
    print(f"speedup_vs_naive={speedup:.2f} (median of {len(ratios)} interleaved pairs, spread {spread})")


if __name__ == "__main__":
    main()
