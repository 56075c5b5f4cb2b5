"""Import heavy optional dependencies on demand, with an install hint when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ImpsampError

# import name -> (pip extra that installs it, pip package name)
_EXTRAS = {
    "torch": ("train", "torch==2.13.0"),
    "faiss": ("cluster", "faiss-cpu"),
    "sentence_transformers": ("embed", "sentence-transformers"),
    "onnxruntime": ("embed", "onnxruntime"),
    "tokenizers": ("train", "tokenizers"),
    "sklearn": ("select", "scikit-learn"),
    "threadpoolctl": ("select", "threadpoolctl"),
    "matplotlib": ("plot", "matplotlib"),
    "safetensors": ("train", "safetensors"),
    "zstandard": ("io", "zstandard"),
    "ray": ("ray", "ray"),
}


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def require(module: str) -> ModuleType:
    """Import `module` or raise an `ImpsampError` saying which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra, pkg = _EXTRAS.get(module.split(".")[0], ("all", module))
        raise ImpsampError(
            f"{module} is needed for this step but cannot be imported ({e}); "
            f"install it with: pip install '{pkg}' (or pip install 'impsamp[{extra}]')"
        ) from e
