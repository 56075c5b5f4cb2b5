"""`import impsamp` (and the foundation modules) stays light: no CLI, no deep-learning stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("click", "torch", "faiss", "sentence_transformers", "transformers", "datasets", "sklearn",
         "matplotlib", "onnxruntime", "tqdm", "ray")


@pytest.mark.parametrize("imports", [
    "impsamp",
    "impsamp.io, impsamp.manifest, impsamp.config, impsamp.errors",
])
def test_importing_the_library_stays_light(imports):
    code = (f"import sys; import {imports}; heavy = set({HEAVY!r}) & set(sys.modules); "
            "assert not heavy, sorted(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_opening_and_reading_a_corpus_stays_light(tmp_path):
    """Using the readers (JSONL, zstd, Parquet) pulls in no heavy module either."""
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    code = ("import sys, zstandard, pyarrow as pa, pyarrow.parquet as pq\n"
            f"d = {str(tmp_path)!r}\n"
            "zst = zstandard.ZstdCompressor().compress(b'{\"text\": \"y\"}\\n')\n"
            "open(d + '/b.jsonl.zst', 'wb').write(zst)\n"
            "pq.write_table(pa.table({'text': ['z']}), d + '/c.parquet')\n"
            "from impsamp.io import open_corpus, corpus_summary\n"
            "assert corpus_summary(open_corpus(d))['documents'] == 3\n"
            f"heavy = set({HEAVY!r}) & set(sys.modules)\n"
            "assert not heavy, sorted(heavy)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_a_missing_optional_dependency_says_what_to_install(monkeypatch):
    from impsamp._deps import require
    from impsamp.errors import ImpsampError

    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail, installed or not
    hint = r"pip install 'faiss-cpu' \(or pip install 'impsamp\[cluster\]'\)"
    with pytest.raises(ImpsampError, match=hint):
        require("faiss")


def test_no_exported_name_is_also_a_submodule():
    """`impsamp.training.export` and `impsamp.mixture.specialize` were functions and modules both: once any code
    imported the module (an `impsamp info` of an export folder; a compare with experts), the package's name was the
    module, and `impsamp.specialize(...)` failed with "'module' object is not callable"."""
    import importlib
    import pkgutil

    for pkg in ("impsamp", "impsamp.training", "impsamp.mixture", "impsamp.resampling", "impsamp.clustering",
                "impsamp.embedding", "impsamp.explorer", "impsamp.io"):
        m = importlib.import_module(pkg)
        clash = {s.name for s in pkgutil.iter_modules(m.__path__)} & set(getattr(m, "__all__", ()))
        assert not clash, f"{pkg}: {sorted(clash)} name both a submodule and what the package exports"
