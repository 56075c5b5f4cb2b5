"""Where a run starts from and what it cost: `--init` checked against the flags, and the FLOPs
accounting every run records (`impsamp.costs`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..costs import Costs, forward_flops, model_costs, training_flops
from ..errors import ConfigError, StageError
from ..io.discovery import absolute_glob
from ..outdir import complete_manifest
from .config import ModelConfig, TokenizerError, TrainConfig, TrainError
from .result import TrainRun
from .tokenizer import file_sha256


def one_time_work(data: Sequence[str], clusters: str | None, per_target: bool) -> dict[str, tuple[str, float]]:
    """The one-time work behind a run's data, keyed by what it made (`Costs.paying` counts each once, however many
    runs inherit it): for each `resample` selection, embedding its target (per-target `selection`, when the
    pretraining is per target) and the generic corpus (`generic`, for the methods that read the vectors); for a
    network conditioned on `clusters`, embedding their corpus."""
    work: dict[str, tuple[str, float]] = {}
    for spec in dict.fromkeys(data):  # a selection given twice was made once
        m = complete_manifest(Path(spec))
        if m is None or m.get("stage") != "resample":
            continue
        try:
            stats, embeddings = m["stats"], m["inputs"]["embeddings"]["fingerprint"]
            if per_target:
                work[f"select:{m['fingerprint']}"] = ("selection", float(stats.get("selection_flops", 0.0)))
            work[f"embed:{embeddings}"] = ("generic", float(stats.get("generic_flops", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError):  # an older selection's record: not counted
            continue
    if clusters:
        from ..clustering import Clusters

        clu = Clusters.load(clusters)
        try:
            emb = clu.embeddings()
            work[f"embed:{emb.manifest.fingerprint}"] = ("generic", emb.flops)
        except (StageError, KeyError, TypeError):  # the embeddings are gone: not counted
            pass
    return work


def is_selection(spec: str) -> bool:
    """Whether a --data spec is a `resample` output (a selection made for one target)."""
    m = complete_manifest(Path(spec))
    return m is not None and m["stage"] == "resample"


def with_paths_resolved(cfg: TrainConfig) -> TrainConfig:
    """`tokenizer`, `init` and `teacher` as absolute paths: a run killed in one working directory, or named
    `./run` once and `run` next, resumes (and is reused) as the same run."""
    paths = {k: str(Path(v).resolve()) for k in ("tokenizer", "init", "teacher") if (v := getattr(cfg, k))}
    return replace(cfg, **paths) if paths else cfg


def with_init_defaults(cfg: TrainConfig) -> TrainConfig:
    """With `init`, the run's own preset (its learning-rate and batch defaults) and family where `cfg` keeps the
    defaults (tiny, dense), and its own learning rate and batch where it set them and `cfg` does not (the
    fine-tuning lr is then the run's lr / 10): `TrainConfig(init=RUN)` fine-tunes as `impsamp train --init RUN`
    does. A preset other than the default and the run's is refused (the run fixes the model). Paths are made
    absolute (`with_paths_resolved`)."""
    cfg = with_paths_resolved(cfg)
    if not cfg.init:
        return cfg
    try:
        own = TrainRun.load(cfg.init).config
    except (StageError, FileNotFoundError, OSError, ValueError, TypeError):
        return cfg  # `init_run` says what is wrong with it
    default = TrainConfig()
    if cfg.preset not in (default.preset, own.preset):
        raise ConfigError(f"--init {cfg.init} fixes the model (preset {own.preset}): drop --preset {cfg.preset}")
    carried = {k: getattr(own, k) for k in ("lr", "batch_size") if getattr(cfg, k) is None}
    return replace(cfg, preset=own.preset, arch=own.arch if cfg.arch == default.arch else cfg.arch, **carried)


def init_run(cfg: TrainConfig) -> TrainRun:
    """The run `--init` names, checked against the flags that would contradict it."""
    try:
        run = TrainRun.load(cfg.init)
    except (StageError, FileNotFoundError) as e:
        raise TrainError(f"--init {cfg.init}: not a finished `impsamp train` run ({e})") from None
    if run.config.arch != cfg.arch:
        raise ConfigError(f"--init {cfg.init} is a {run.config.arch!r} model; pass --arch {run.config.arch}")
    shape = run.model_config
    clash = [f"--{k.replace('_', '-')} {getattr(cfg, k)} (the run has {getattr(shape, k)})"
             for k in ("n_layer", "n_embd", "n_head", "mlp_hidden", "block_size")
             if getattr(cfg, k) is not None and getattr(cfg, k) != getattr(shape, k)]
    if cfg.vocab_size is not None:  # the run's tokenizer is used: its size, or the size it was trained for, is no clash
        size = run.load_tokenizer().vocab_size
        asked = run.config.resolved("vocab_size") if run.config.tokenizer is None else size
        if cfg.vocab_size not in (asked, size):
            clash.append(f"--vocab-size {cfg.vocab_size} (its tokenizer has {size:,} tokens)")
    if clash:
        raise ConfigError(f"--init {cfg.init} fixes the model shape: drop {', '.join(clash)}")
    if cfg.tokenizer and file_sha256(cfg.tokenizer) != file_sha256(run.tokenizer_path):
        raise TokenizerError(f"--tokenizer {cfg.tokenizer} is not the tokenizer of --init {cfg.init}; "
                             "drop --tokenizer (the run's own is used)")
    return run


def check_teacher(cfg: TrainConfig, init: TrainRun | None, finetunes: bool) -> TrainRun:
    """The `--teacher` run, checked before anything is written: it guides fine-tuning and must share
    the student's tokenizer (the --init run's, or --tokenizer)."""
    if not finetunes:
        raise ConfigError(f"--teacher {cfg.teacher} guides fine-tuning: pass --finetune (the in-domain sample)")
    try:
        teacher = TrainRun.load(cfg.teacher)
    except (StageError, FileNotFoundError) as e:
        raise TrainError(f"--teacher {cfg.teacher}: not a finished `impsamp train` run ({e})") from None
    if teacher.config.arch != "dense":  # a projected network needs a condition for each target
        raise TrainError(f"--teacher {cfg.teacher} is a '{teacher.config.arch}' network; a teacher is a dense "
                         "model: use the small model `impsamp project` makes from it for this target")
    student_tok = init.tokenizer_path if init is not None else cfg.tokenizer
    if student_tok is None:
        raise ConfigError(f"--teacher {cfg.teacher}: give the student's tokenizer (--init RUN or --tokenizer) so "
                          "teacher and student share it")
    if file_sha256(student_tok) != file_sha256(teacher.tokenizer_path):
        raise TokenizerError(f"--teacher {cfg.teacher} has another tokenizer than the student ({student_tok}); "
                             "a teacher only guides a student over the same tokens: train both with one --tokenizer")
    return teacher


def run_costs(mcfg: ModelConfig, metrics: dict[str, Any], base: Costs | None, init: TrainRun | None,
              data: list[str], pretrain_costs: str, teacher: TrainRun | None = None,
              clusters: str | None = None) -> Costs:
    """FLOPs of a run's phases on top of what it started from: `base`, else the `init` run's costs.

    Pretraining is charged to `generic` unless it ran on `resample` selections (a selection is
    made for one target: per-target `pretraining`) or `pretrain_costs` says otherwise. Embedding the generic
    corpus is `generic` (paid once) for a selection method that reads the embeddings and for a network
    conditioned on `clusters`; embedding the target is per-target `selection`. A distilling
    run adds its teacher: the teacher's generic FLOPs to `generic`, its per-target FLOPs (its own
    fine-tuning on the target) and its forward passes over the fine-tuning tokens to `teacher`."""
    if base is None:
        base = Costs.from_dict(init.metrics.get("costs")) if init is not None else Costs()
    c = base + model_costs(mcfg)
    if base.params_total > c.params_total:  # made from a larger stored whole (a projected network, the experts):
        c = replace(c, params_total=base.params_total)  # serving new targets keeps storing it
    if "train" in metrics:
        how = pretrain_costs
        if how == "auto":
            how = "per-target" if data and all(is_selection(d) for d in data) else "generic"
        c = c.with_part("generic" if how == "generic" else "pretraining",
                        training_flops(mcfg, metrics["train"]["tokens"]))
        c = c.paying(one_time_work(data, clusters, per_target=how != "generic"))
    if "train_finetune" in metrics:
        c = c.with_part("finetuning", training_flops(mcfg, metrics["train_finetune"]["tokens"]))
    if teacher is not None:
        t = Costs.from_dict(teacher.metrics.get("costs"))
        c = c.with_teacher(t, forward_flops(teacher.model_config, metrics.get("train_finetune", {}).get("tokens", 0)))
    return c


def run_inputs(cfg: TrainConfig, data: list[str], data_field: str, finetune: list[str], evals: list[str],
               init: TrainRun | None, base_costs: Costs | None, world: int,
               teacher: TrainRun | None = None, finetune_field: str | None = None) -> dict[str, Any]:
    """What a run records as its inputs (part of its resume key): corpora by fingerprint, paths made
    absolute (so that `guards` finds what an --overwrite must spare from any folder)."""
    from ..io import open_corpus

    def corpus(paths: list[str], field: str) -> dict[str, Any] | None:
        return {"paths": [absolute_glob(p) for p in paths],
                "fingerprint": open_corpus(paths, text_field=field).fingerprint()} if paths else None

    inputs: dict[str, Any] = {
        "data": corpus(data, data_field), "finetune": corpus(finetune, finetune_field or cfg.text_field),
        "eval": [{"path": absolute_glob(e), "fingerprint": open_corpus(e, text_field=cfg.text_field).fingerprint()}
                 for e in evals],
        "tokenizer": file_sha256(cfg.tokenizer) if cfg.tokenizer else None}
    if init is not None:
        inputs["init"] = {"path": os.path.abspath(cfg.init), "fingerprint": init.manifest.fingerprint}
    if teacher is not None:
        inputs["teacher"] = {"path": os.path.abspath(cfg.teacher), "fingerprint": teacher.manifest.fingerprint}
    if cfg.clusters:
        from ..clustering import Clusters

        inputs["clusters"] = {"path": os.path.abspath(cfg.clusters),
                              "fingerprint": Clusters.load(cfg.clusters).manifest.fingerprint}
    if base_costs is not None:
        inputs["base_costs"] = base_costs.to_dict()
    inputs["world_size"] = world
    return inputs


def finished_run(path: Path, cfg: TrainConfig, data: Sequence[str], finetune: Sequence[str] = (),
                 evals: Sequence[str] = ()) -> TrainRun | None:
    """The finished run in `path` if this impsamp version made it with `cfg` on these data, fine-tuning and
    evaluation files, from its `init` run and with its `teacher` (each by fingerprint), else None: what
    `compare` reuses after a kill or a rerun."""
    from dataclasses import asdict

    from .. import __version__
    from ..io import as_specs, open_corpus
    from .data import data_text_field

    def fingerprint(paths: list[str], field: str) -> str | None:
        return open_corpus(paths, text_field=field).fingerprint() if paths else None

    cfg = with_init_defaults(cfg)  # as `train` records it (the caller's paths may be relative)
    try:
        tr = TrainRun.load(path)
        m = tr.manifest
        if m.config != json.loads(json.dumps(asdict(cfg))) or m.impsamp_version != __version__:
            return None
        data, finetune = as_specs(data), as_specs(finetune)
        recorded = [(m.inputs.get(role) or {}).get("fingerprint") for role in ("data", "finetune")]
        recorded += [e.get("fingerprint") for e in m.inputs.get("eval") or []]
        wanted = [fingerprint(data, data_text_field(data, cfg.text_field)),
                  fingerprint(finetune, data_text_field(finetune, cfg.text_field, "--finetune"))]
        wanted += [fingerprint([e], cfg.text_field) for e in as_specs(evals)]
        # the runs it started from and learnt from, by content: a same-path run remade since is another input
        for role, named in (("init", cfg.init), ("teacher", cfg.teacher)):
            if named:
                recorded.append((m.inputs.get(role) or {}).get("fingerprint"))
                wanted.append(TrainRun.load(named).manifest.fingerprint)
        return tr if recorded == wanted else None
    except (StageError, FileNotFoundError, KeyError, OSError, AttributeError):
        return None
