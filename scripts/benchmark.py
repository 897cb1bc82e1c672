#!/usr/bin/env python3
"""Speed of the inference paths against the naive per-slice loop, interleaved in one run, and the default they give.

    python scripts/benchmark.py --quick        # a few minutes on 2 CPU cores; ends with the chosen CPU default
    python scripts/benchmark.py                # + whole volumes 256x256x180 and 512x512x300 (long on CPU)
    python scripts/benchmark.py --device cuda  # the GPU paths against the naive loop on the same GPU
    python scripts/benchmark.py --quick --load # with the other core kept busy (a Slicer session, a training run)
    python scripts/benchmark.py --registration # rigid MI registration of a 256x256x180 pair: seconds and error

Compared (``engine.fuse_volume`` as shipped, air skipping included, except the naive loop):
- naive = what research test scripts do: torch, one slice at a time, fp32, eager, full slices, torch.no_grad;
- torch fp32 = the network's fused-kernel CPU path (network.FusedECFusion on fast_cpu.py kernels; autocast +
  batching on GPU);
- torch bf16 = the same in bf16 (on CPUs with native bf16, AVX512-BF16/AMX, and GPUs);
- onnxruntime = ONNX Runtime (fp32) on the shipped graph (``onnx_backend``).
Workloads: 256x256 and 512x512 slices without air, and the phantom head (axial slices). A noisy, shared machine
is handled by interleaving: each round runs every path once (the order rotating from round to round), each
round gives one ratio naive/path per path, and the median ratio is reported with the spread (min-max) of the
rounds; a load burst spoils one round, not the result. Accuracy: mean and max |difference| from the naive
fp32 output (inside the head for the head). The default is the fastest path on the head whose mean difference
is within 1 grey level. Weights: the bundled PET-MRI weights. The process is tuned as the ``ecfusion`` command
tunes it (``runtime.tune_cpu``).
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

from ECFusionLib.backends import installed, load_network  # noqa: E402
from ECFusionLib.engine import cpu_has_bf16, fuse_volume, make_runner, resolve_device  # noqa: E402
from ECFusionLib.network import count_parameters  # noqa: E402
from ECFusionLib.runtime import tune_cpu  # noqa: E402
from ECFusionLib.tasks import DEFAULT_TASK, DEVICES  # noqa: E402


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


def interleaved(paths: dict, dev, rounds: int) -> dict:
    """Every path once per round, the order rotating from round to round. Returns {name: {"times": seconds per
    round, "ratios": naive time / this path's time in the same round, "out": the last output}}."""
    names = list(paths)
    result = {name: {"times": [], "out": None} for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t, out = timed(paths[name], dev)
            result[name]["times"].append(t)
            result[name]["out"] = out[0] if isinstance(out, tuple) else out
    naive = np.array(result["naive"]["times"])
    for name in names:
        result[name]["ratios"] = naive / np.array(result[name]["times"])
    return result


def report(title: str, result: dict, n_slices: int, inside: np.ndarray | None = None) -> dict[str, float]:
    """Print one workload's table rows; returns {path: mean |diff| from naive (inside ``inside`` if given)}."""
    ref = result["naive"]["out"].astype(int)
    means = {}
    print(f"\n{title}")
    print("| path | ms per slice (median) | speed-up vs naive: median (spread) | mean abs diff from naive | max |")
    print("|---|---|---|---|---|")
    for name, r in result.items():
        diff = np.abs(r["out"].astype(int) - ref)
        means[name] = float(diff[inside].mean() if inside is not None else diff.mean())
        ratios = r["ratios"]
        print(f"| {name} | {1000 * float(np.median(r['times'])) / n_slices:.0f} | {np.median(ratios):.2f}x "
              f"({ratios.min():.2f}-{ratios.max():.2f}) | {means[name]:.2f} | {diff.max()} |")
    return means


def make_paths(model, dev, a_warm, b_warm) -> dict:
    """The compared paths (module docstring) that this machine has: {name: fn(a, b) -> fused}, warmed up."""
    runners = {"torch fp32": make_runner(model, device=str(dev), precision="fp32")}
    if dev.type == "cuda" or cpu_has_bf16():
        runners["torch bf16"] = make_runner(model, device=str(dev), precision="bf16")
    if installed("onnxruntime"):
        net, _ = load_network(DEFAULT_TASK, backend="onnxruntime", device=dev.type)
        runners["onnxruntime"] = make_runner(net)
    paths = {"naive": lambda a, b: naive_fuse(model, a, b, dev)}
    for name, runner in runners.items():
        paths[name] = (lambda r: lambda a, b: fuse_volume(r, a, b)[0])(runner)
    for fn in paths.values():
        fn(a_warm, b_warm)
    return paths


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
    w, l = default_window_level(sitk.GetArrayViewFromImage(ph["PET"]), None, None, "PET-Heat")
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
    p.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--load", action="store_true", help="keep one other core busy during the measurements")
    p.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: each one's choice)")
    p.add_argument("--registration", action="store_true", help="only: time rigid registration of a 256x256x180 pair")
    p.add_argument("--rounds", "--pairs", dest="pairs", type=int, help="interleaved rounds per workload (default 5, quick 3)")
    args = p.parse_args(argv)
    tune_cpu()
    if args.registration:
        return benchmark_registration()
    if args.threads:
        from ECFusionLib import onnx_backend

        torch.set_num_threads(args.threads)
        onnx_backend.DEFAULT_THREADS = args.threads
    dev = resolve_device(args.device)
    from ECFusionLib.weights import load_model

    model, _ = load_model(DEFAULT_TASK)
    stop = mp.Event()
    loader = None
    if args.load:
        loader = mp.Process(target=busy_loop, args=(stop,), daemon=True)
        loader.start()

    ort = __import__("onnxruntime").__version__ if installed("onnxruntime") else "not installed"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"onnxruntime {ort}, load average {os.getloadavg()[0]:.1f}, "
          f"threads {torch.get_num_threads()}, device {dev}, native bf16 {cpu_has_bf16()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, other core busy: {args.load}")
    print(f"parameters: {count_parameters(model):,}")
    print(f"FLOPs per 256x256 slice pair (multiply-adds, fvcore convention): {flops_per_slice(model) / 1e9:.2f} G")
    model = model.to(dev)

    rng = np.random.default_rng(0)
    rounds = args.pairs or (3 if args.quick else 5)
    a, b = head_pair()
    if args.quick:
        a, b = a[::6], b[::6]
    paths = make_paths(model, dev, a[:1], b[:1])
    for size, n in [(256, 4 if args.quick else 10), (512, 2 if args.quick else 5)]:
        sa, sb = (rng.integers(0, 256, (n, size, size), dtype=np.uint8) for _ in range(2))
        report(f"{size}x{size} slices, no air, {n} per run, {rounds} rounds:",
               interleaved({k: (lambda f: lambda: f(sa, sb))(f) for k, f in paths.items()}, dev, rounds), n)

    air = float(np.mean((a <= 4) & (b <= 4)))
    head = interleaved({k: (lambda f: lambda: f(a, b))(f) for k, f in paths.items()}, dev, rounds)
    means = report(f"phantom head {a.shape[2]}x{a.shape[1]}, {a.shape[0]} axial slices, background fraction "
                   f"{air:.2f}, {rounds} rounds:", head, a.shape[0], inside=(a > 4) | (b > 4))
    engines = [k for k in paths if k != "naive" and means[k] <= 1.0]
    best = max(engines, key=lambda k: float(np.median(head[k]["ratios"])))
    speedup = float(np.median(head[best]["ratios"]))
    spread = f"{head[best]['ratios'].min():.2f}-{head[best]['ratios'].max():.2f}"

    if not args.quick:
        volumes(model, paths, dev)
    if loader is not None:
        stop.set()
        loader.join(timeout=5)
    print(f"\ndefault on this {dev.type.upper()}: {best} (the fastest path within 1 grey level of naive on the head)")
    print(f"speedup_vs_naive={speedup:.2f} ({best}; median of {rounds} interleaved rounds, spread {spread})")


def volumes(model, paths, dev) -> None:
    """Whole volumes 256x256x180 and 512x512x300: every path once, naive last; engine peak RSS above the inputs."""
    for shape in ((180, 256, 256), (300, 512, 512)):
        va, vb = scaled_head(shape)
        line = []
        for name, fn in paths.items():
            reset_peak_rss()
            base = peak_rss_mb()
            t, _ = timed(lambda: fn(va, vb), dev)
            line.append(f"{name} {t:.1f} s (+{peak_rss_mb() - base:.0f} MB)")
        print(f"volume {shape[2]}x{shape[1]}x{shape[0]}: " + ", ".join(line))


if __name__ == "__main__":
    main()
