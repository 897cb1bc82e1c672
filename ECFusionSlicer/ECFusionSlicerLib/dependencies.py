"""What the module needs to fuse, and what to offer when it is missing; decided without importing torch or Qt.

The policy, in one place (the widget's ``ensure_dependencies`` asks the user; ``plan`` decides):

- PyTorch runs the network from ``TORCH_MINIMUM_NETWORK`` (2.2) on: weights read without pickle (``.npz``,
  ``numpy.load(allow_pickle=False)``) need nothing newer, and the bundled weights are checksummed. Only a
  user's legacy ``.pt`` weights file needs ``TORCH_MINIMUM`` (2.6, ``torch.load(weights_only=True)`` had
  published bypasses before it); ``ECFusionLib.weights`` refuses it on an older torch with that message.
- macOS: Slicer's package is an x86_64 build (it runs under Rosetta on Apple Silicon) and PyTorch's last macOS
  x86_64 release is 2.2.2, with no GPU use. On such a Mac ("Intel build") ECFusion fuses with ONNX Runtime on
  the CPU, or with an existing torch 2.2.
- Without a usable torch, ONNX Runtime (``onnxruntime``, tens of MB, CPU) is offered instead of PyTorch (2 GB),
  where this ECFusionLib has that backend (``library_backends``). Who wants the GPU installs PyTorch through the
  PyTorch extension.
- Versions are read with ``importlib.metadata`` before anything is imported: an old torch is never imported and
  then upgraded in the same process (unreliable on Windows, where loaded DLLs cannot be replaced).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import platform
import re
import sys

from ECFusionLib.runtime import TORCH_MINIMUM_NETWORK
from ECFusionLib.tasks import BACKENDS, check_choice

DEFAULT_BACKEND = BACKENDS[0]  # "auto"
ONNXRUNTIME_PACKAGE = "onnxruntime"
LAST_INTEL_MAC_TORCH = "2.2.2"


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (e.g. "2.13.0+cpu"), None when absent; imports nothing.

    A module hidden by ``sys.modules[name] = None`` (how tests and some hosts block an import) counts as absent.
    """
    if distribution in sys.modules and sys.modules[distribution] is None:
        return None
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as "2.2.2+cpu"; (0, 0) when it has no numbers."""
    numbers = re.findall(r"\d+", version.split("+")[0])[:2]
    return tuple(int(n) for n in numbers) if len(numbers) == 2 else (0, 0)


def _dotted(v: tuple[int, int]) -> str:
    return ".".join(map(str, v))


def torch_problem(version: str | None) -> str | None:
    """None if PyTorch ``version`` runs the network, else what is wrong (absent or older than 2.2)."""
    if version is None:
        return "PyTorch is not installed"
    if version_tuple(version) < TORCH_MINIMUM_NETWORK:
        return f"PyTorch {version} is older than {_dotted(TORCH_MINIMUM_NETWORK)}, the oldest that runs ECFusion"
    return None


def is_intel_mac(system: str | None = None, machine: str | None = None) -> bool:
    """True on macOS when this Python is an x86_64 build (Slicer's macOS package, also under Rosetta)."""
    return (system or platform.system()) == "Darwin" and (machine or platform.machine()) == "x86_64"


def library_backends() -> tuple[str, ...]:
    """The inference backends this ECFusionLib has: ("torch",) or ("torch", "onnxruntime") once
    ``FusionSettings`` takes ``backend`` (the ONNX Runtime backend of ECFusionLib). Where ECFusionLib.fusion
    cannot be imported (a torch-only ECFusionLib without torch), no backend is usable: ()."""
    try:
        from ECFusionLib.fusion import FusionSettings
    except ImportError:
        return ()
    names = {f.name for f in dataclasses.fields(FusionSettings)}
    return ("torch", "onnxruntime") if "backend" in names else ("torch",)


def resolve_backend(backend: str = DEFAULT_BACKEND) -> str:
    """The backend to ask ECFusionLib for (``ECFusionLib.backends``). Its "auto" takes torch whenever torch is
    installed; here "auto" takes torch only when it runs the network (>= 2.2), else ONNX Runtime when installed,
    else leaves "auto" to ECFusionLib (which says that neither is installed)."""
    check_choice(backend, BACKENDS, "backend")
    if backend != "auto" or torch_problem(installed_version("torch")) is None:
        return "torch" if backend == "auto" else backend
    return "onnxruntime" if installed_version(ONNXRUNTIME_PACKAGE) else backend


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do before fusing. ``backend``: ready to run with it (nothing to install). Else ``install``:
    "onnxruntime" (pip, tens of MB), "torch" (the PyTorch extension) or None (nothing can be installed from
    here), and ``message``: what the user is told or asked, in plain words."""

    backend: str | None
    install: str | None = None
    message: str = ""


def plan(torch_version: str | None, onnxruntime_version: str | None, intel_mac: bool,
         onnx_backend: bool) -> Plan:
    """Decide from the installed versions (``installed_version``), the platform (``is_intel_mac``) and whether
    ECFusionLib has the ONNX Runtime backend (``library_backends``)."""
    problem = torch_problem(torch_version)
    if problem is None:
        return Plan("torch")
    if onnx_backend and onnxruntime_version:
        return Plan("onnxruntime")
    mac = (f" On this Mac (Slicer's Intel build) PyTorch stops at {LAST_INTEL_MAC_TORCH} and cannot use the GPU."
           if intel_mac else "")
    kept = f" The installed PyTorch {torch_version} is left as it is." if torch_version else ""
    if onnx_backend:
        return Plan(None, "onnxruntime",
                    f"{problem}.{mac} ECFusion can run on the CPU with ONNX Runtime instead (a download of tens of "
                    f"MB, no restart needed).{kept} Install ONNX Runtime now? (For the GPU, install PyTorch "
                    "with the PyTorch extension instead.)")
    if torch_version and "torch" in sys.modules:  # already imported: replacing its files now is unsafe
        return Plan(None, None, f"{problem}. Update PyTorch in the PyTorch extension's module, then restart "
                                "Slicer.")
    target = f"PyTorch {LAST_INTEL_MAC_TORCH} (the last release for this Mac)" if intel_mac else "PyTorch"
    return Plan(None, "torch", f"{problem}.{mac} ECFusion will install {target} through the PyTorch extension.")
