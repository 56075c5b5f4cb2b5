"""`demo()`: the main job on the bundled real corpus, as `impsamp demo` runs it.

    report = impsamp.demo("python_docs", "impsamp-demo")
    print(report.table())

Generic corpus: the pool of all 8 bundled domains (`datasets.demo_corpus`); target: one domain's in-domain
sample; evaluation: that domain's held-out text. It is a `comparison.compare` with `DEMO_DEFAULTS` (a smaller
model and fewer steps than compare's), whose pool embeddings are made once and kept in the user cache
(`usercache`), one entry per installation, version, backend and window. A report of the same settings and version
is reused; the demo replaces its own reports in `out_dir` (any other output there is refused).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from .comparison import K_DEFAULT, METHODS, CompareConfig, Report, compare, resolve_k
from .config import as_config, cache_dir, from_dict, to_dict
from .errors import ConfigError, StageError

DEMO_DEFAULTS = {"preset": "mini", "steps": 80, "finetune_steps": 20, "k": K_DEFAULT}
"""The demo's model and steps, where `compare` has `tiny`, 100 and 30: about half the training time (the `mini`
preset runs ~2.2x `tiny`'s tokens/s), so the demo ends in about 4 minutes on 2 cores without AMX, and importance
sampling's lead over uniform stays as plain (BENCHMARKS.md, `impsamp demo`)."""


def demo_config(*, all_methods: bool = False, **settings) -> CompareConfig:
    """The demo's `CompareConfig`: `DEMO_DEFAULTS` under `settings` (tokens, k, steps, finetune_steps, preset,
    seed; None keeps the default), every selector with `all_methods` (else uniform and importance)."""
    given = {name: value for name, value in settings.items() if value is not None}
    if all_methods and "methods" in given:  # one would silently replace the other
        raise ConfigError("demo_config: give all_methods=True or methods=..., not both")
    return resolve_k(from_dict(CompareConfig, {**DEMO_DEFAULTS, **given, **({"methods": METHODS} if all_methods else {})},
                               source="demo_config"))


def demo(domain: str = "python_docs", out_dir: str | Path = "impsamp-demo", *,
         config: CompareConfig | dict | None = None, progress: bool = False, command: str | None = None) -> Report:
    """Compare uniform sampling and clustered importance sampling for one bundled domain as the target, on the
    pool of all 8: the report in `out_dir` (reused when it was made with the same settings and version).
    `config`: `demo_config(...)` for another budget, k, steps, preset or seed, or every selector
    (`demo_config(all_methods=True)`); a dict is read as `demo_config(**config)`."""
    from . import __version__
    from .datasets import demo_corpus
    from .embedding.loading import backend_label, embed_backend

    corpus = demo_corpus()
    sample, held_out = corpus.sample(domain), corpus.eval(domain)  # an unknown domain: refused before any work
    # a dict: settings over the demo's defaults, as demo_config takes them; k made concrete as the report records
    # it (a config without k never found its finished report)
    cfg = (demo_config() if config is None else demo_config(**config) if isinstance(config, Mapping)
           else resolve_k(as_config(CompareConfig, config)))
    out = Path(out_dir)
    emb_dir = embeddings_dir(corpus.pool, backend_label(embed_backend(cfg.backend)), cfg.max_tokens, __version__)
    refuse_other_outputs(out, corpus.pool)
    with contextlib.ExitStack() as stack:  # the cached embeddings are held while this demo reads them
        emb = cached_embeddings(corpus.pool, emb_dir, cfg, progress, stack)
        try:
            report = Report.load(out)
            results = report.results
            same = results.get("config") == to_dict(cfg) and results.get("target_domain") == domain \
                and results.get("impsamp_version") == __version__
            same = same and (out / "report.html").is_file()  # made before report.html existed: write it
        except (StageError, OSError, ValueError, AttributeError):  # none, incomplete or damaged: made again
            same = False
        if not same:
            report = compare([corpus.pool], [sample], [held_out], out, cfg, embeddings=emb, overwrite=True,
                             progress=progress, command=command)
    return report


def embeddings_dir(pool: Path, backend: str, max_tokens: int, version: str) -> Path:
    """The demo's embedding cache for this installation's pool file. The embeddings record the corpus path they
    were made from and selections read the text there, so each installation keeps its own: a cache made by another
    (perhaps deleted) install is never picked up."""
    install = hashlib.sha256(str(Path(pool).resolve()).encode()).hexdigest()[:12]
    return cache_dir() / f"demo-{version}" / f"embeddings-{backend}-{max_tokens}-{install}"


def refuse_other_outputs(out_dir: Path, pool: Path) -> None:
    """The demo replaces its own report (another target's, settings' or version's) without --overwrite: a
    `compare` over the bundled pool, complete or interrupted. Any other impsamp output is refused."""
    from .io import open_corpus
    from .io.discovery import file_digest
    from .outdir import RUN_RECORD, complete_manifest, describe_dir, read_json_dict

    record = complete_manifest(out_dir) or read_json_dict(out_dir / RUN_RECORD)
    if record is None:  # new, empty, or not impsamp's (which the stage refuses to write into)
        return
    generic = (record.get("inputs") or {}).get("generic") if isinstance(record.get("inputs"), dict) else None
    corpus = open_corpus(pool)  # its fingerprint now, and as impsamp up to 0.7.13 took it (sampled Parquet digests)
    before = replace(corpus, files=[replace(f, digest=file_digest(Path(f.path), f.bytes)) for f in corpus.files])
    if record.get("stage") == "compare" and isinstance(generic, dict) \
            and generic.get("fingerprint") in (corpus.fingerprint(), before.fingerprint()):
        return
    raise StageError(f"--out {out_dir} {describe_dir(out_dir)}, not a demo report: choose another --out (the "
                     "demo replaces only its own reports)")


def cached_embeddings(pool: Path, emb_dir: Path, cfg: CompareConfig, progress: bool,
                      stack: contextlib.ExitStack | None = None) -> Path:
    """The demo's embeddings in the user cache, made once (or waited for, while another demo makes them). A
    shared lock on them is held until `stack` closes (or at once without one): `impsamp cache --clear` leaves
    them while this demo reads them."""
    from .embedding import EmbedConfig, Embeddings, embed
    from .embedding.loading import embed_backend
    from .guards import FolderBusy

    for _ in range(3):  # again when a cache clear removed them between the embedding and the hold
        if complete_and_held(emb_dir, stack, wait=False):
            return emb_dir
        if progress:
            print(f"[impsamp] embedding the bundled corpus once (cached in {emb_dir})", file=sys.stderr, flush=True)
        backend, quantize = embed_backend(cfg.backend)
        try:
            embed(pool, emb_dir, EmbedConfig(model=cfg.model, max_tokens=cfg.max_tokens, backend=backend,
                                             quantize=quantize), progress=progress)
        except FolderBusy:  # another demo is filling the cache: its embeddings do, once it is done
            print("[impsamp] another impsamp process is embedding it; waiting for it to end", file=sys.stderr,
                  flush=True)
        except StageError:  # finished by another process meanwhile ("already holds a complete output")
            if not (emb_dir / "manifest.json").exists():
                raise
        if complete_and_held(emb_dir, stack, wait=True):  # waits for the writer's lock, not its readers'
            return emb_dir
        if emb_dir.exists():
            break
    Embeddings.load(emb_dir)  # a one-line error if the other process failed: rerun to resume its work
    return emb_dir  # complete, and not held: this file system has no locks


def complete_and_held(emb_dir: Path, stack: contextlib.ExitStack | None, *, wait: bool) -> bool:
    """Hold `emb_dir` (waiting for a writer with `wait`), then check it is a complete embedding: True, held
    until `stack` closes; False, let go (so that `embed` may write it)."""
    from .embedding import Embeddings
    from .usercache import Hold

    hold = Hold(emb_dir, wait=wait)
    try:
        if not hold.held:  # being written or removed (a cache clear holds it): not to be read now
            raise StageError(f"{emb_dir} is not held")
        Embeddings.load(emb_dir)
    except StageError:
        hold.release()
        return False
    if stack is None:
        hold.release()
    else:
        stack.callback(hold.release)
    return True
