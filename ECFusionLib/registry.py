"""The model registry: network architectures by name, as timm's ``register_model`` / ``create_model``.

    @register_model("ecfusion-v1")
    class ECFusionNet(nn.Module): ...

    model = create_model("ecfusion-v1")               # default widths
    model = create_model("ecfusion-v1", width=8)      # constructor arguments

A registered class gets ``architecture`` (its name); its instances should keep their constructor arguments
in ``self.config`` (a dict of plain values), which ``weights.save_weights`` stores so that the loader can
rebuild the same network. A model that offers a faster inference path defines ``cpu_runner(dtype)``
(see ``engine.make_runner``); any other is run with its plain forward pass.
Adding an architecture = one new module with the decorated class + its name in ``BUILTIN_MODULES``.

No torch at import: the command-line parser and the Slicer widget may list names at no cost.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ECFusionError

BUILTIN_MODULES = ("ECFusionLib.network",)  # modules whose import registers the bundled architectures
DEFAULT_ARCHITECTURE = "ecfusion-v1"  # what `ecfusion train` builds unless told otherwise


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its name, class and one-line description (the class docstring's first line)."""

    name: str
    cls: type
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: register an architecture under ``name``.

    Args:
        name: the architecture's name, as written in weights files and the catalogue (e.g. "ecfusion-v1").
    Returns:
        The decorator; it sets ``cls.architecture = name`` and returns the class unchanged otherwise.
    Raises:
        ValueError: ``name`` is already taken by another class.
    """
    def decorate(cls: type) -> type:
        old = _REGISTRY.get(name)
        if old is not None and old.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"architecture name '{name}' is already registered for {old.cls.__qualname__}")
        cls.architecture = name
        doc = (cls.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name, cls, doc[0] if doc else "")
        return cls

    return decorate


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (tests, plug-ins being unloaded); no error if absent."""
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def model_entries() -> dict[str, ModelEntry]:
    """All registered architectures, by name (the bundled ones are imported on first call)."""
    _load_builtins()
    return dict(_REGISTRY)


def model_names() -> tuple[str, ...]:
    """Names of the registered architectures, sorted."""
    return tuple(sorted(model_entries()))


def create_model(name: str, **kwargs: Any):
    """A new network of architecture ``name`` (random weights, training mode, as ``torch.nn.Module``s start).

    Args:
        name: a registered architecture.
        **kwargs: its constructor arguments (e.g. widths); omitted ones take the class's defaults.
    Returns:
        The model (a ``torch.nn.Module``).
    Raises:
        ECFusionError: unknown name (naming the known ones) or arguments the constructor does not take.
    """
    entries = model_entries()
    if name not in entries:
        raise ECFusionError(f"unknown network architecture '{name}': known are {', '.join(sorted(entries))}")
    try:
        return entries[name].cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # unknown argument, impossible width, ...
        raise ECFusionError(f"architecture '{name}' cannot be built with {kwargs}: {exc}") from exc


def architecture_of(model) -> str:
    """The registered name of ``model``'s architecture; ECFusionError for an unregistered class."""
    name = getattr(type(model), "architecture", None)
    if name is None or model_entries().get(name, ModelEntry("", object, "")).cls is not type(model):
        raise ECFusionError(f"{type(model).__name__} is not a registered architecture; decorate it with "
                            "@register_model(name)")
    return name
