"""`experts()`: the seed paper's SLM-mix. The generic corpus split into groups of clusters, one small LM
pretrained per group, every expert an ordinary `train` run sharing one tokenizer.

    DIR/groups.json            the grouping (leaf -> group) and each group's documents, tokens, budget
    DIR/tokenizer.json         the shared BPE (trained on the generic corpus, or the one given)
    DIR/data/g000/part-*.parquet   group 0's documents, written by the resampler's writer
    DIR/experts/g000/          group 0's expert: a complete `impsamp train` run
    DIR/manifest.json          last, listing every file above

Shards: one per embedding shard for the data (`data-00000`, ...) and one per expert (`expert-000`,
...). A killed run resumes: committed shards are kept and an expert interrupted mid-training resumes
from its checkpoint. Experts run one after another here, as Ray tasks (`engine="ray"`), or as
Slurm-array slices (`--num-shards/--shard-index`, then `impsamp finalize DIR`); the bytes are the
same whichever way (a run's weights do not depend on the number of torch threads).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..clustering.groups import Grouping, make_grouping
from ..config import as_config
from ..costs import Costs
from ..errors import CorpusError
from ..guards import claim, released_on_return
from ..manifest import MANIFEST, StageRun, atomic_write_json, read_manifest
from ..progress import progress_bar
from ..scale import LOCAL, Execution, SliceResult, check_complete, commit_once, run_tasks, slice_result
from .config import ExpertsConfig
from .result import GROUPS, TOKENIZER, Experts, data_dir, expert_dir

logger = logging.getLogger(__name__)


@released_on_return
def experts(embeddings, clusters, out_dir: str | Path, config: ExpertsConfig | None = None, *,
            execution: Execution | None = None, overwrite: bool = False, progress: bool = False
            ) -> Experts | SliceResult:
    """Split the generic corpus into groups of clusters and pretrain one small LM per group.

    Args:
        embeddings, clusters: `impsamp embed` and `impsamp cluster` outputs (paths or handles) of the
            generic corpus; the clustering must come from these embeddings.
        config: groups, budgets and the experts' training settings (`ExpertsConfig`).
        execution: where the experts train (`impsamp.scale.Execution`).

    Returns:
        `Experts`, or a `SliceResult` for a slice of a Slurm array.
    """
    from ..resampling.config import ResampleConfig
    from ..resampling.inputs import open_inputs

    cfg = as_config(ExpertsConfig, config) or ExpertsConfig()
    ex = execution or LOCAL
    inputs = open_inputs(embeddings, clusters, ResampleConfig(docs=1))
    grouping = make_grouping(inputs.clu, cfg.groups, cfg.level, cfg.seed)
    described = inputs.described()
    if cfg.tokenizer:  # a bad file is refused before the output folder is made
        from ..training import load_tokenizer

        load_tokenizer(cfg.tokenizer)
    run = StageRun(Path(out_dir), "experts", config=asdict(cfg), inputs={
        "embeddings": described["embeddings"], "clusters": described["clusters"]}, overwrite=overwrite,
        slice_name=ex.slice_name).begin()
    out = run.out_dir
    groups = _describe_groups(grouping, inputs.clu, cfg)
    atomic_write_json(out / GROUPS, {**grouping.to_dict(), "per_group": groups})
    tokenizer = _shared_tokenizer(out, cfg, inputs, progress)
    data_names = [f"data-{s:05d}" for s in range(len(inputs.names))]
    expert_names = [f"expert-{g:03d}" for g in range(grouping.n_groups)]
    committed = 0  # shards this run wrote: its data's, then its experts'
    if ex.require_complete:
        check_complete(run, data_names + expert_names)
    else:
        committed = _write_group_data(run, inputs, grouping, data_names, progress, ex)
        _refuse_small_groups(out, cfg, groups, tokenizer)

    def done(name: str, result: dict[str, Any]) -> None:
        nonlocal committed
        committed += commit_once(run, name, {}, stats=result)

    tasks = [(name, (g, str(out), cfg, groups[g]["budget"], str(tokenizer), progress and ex.engine == "local"))
             for g, name in enumerate(expert_names) if ex.mine(g) and not run.is_done(name)]
    run_tasks(ex, train_expert, tasks, done)
    if ex.sliced:
        return slice_result(run, ex, committed, data_names + expert_names)
    return _finish(run, grouping, groups, {f"embed:{inputs.emb.manifest.fingerprint}": ("generic", inputs.emb.flops)})


def _describe_groups(grouping: Grouping, clu, cfg: ExpertsConfig) -> list[dict[str, Any]]:
    counts = clu.counts()
    docs = np.bincount(grouping.leaf_group, weights=counts["documents"], minlength=grouping.n_groups)
    tokens = np.bincount(grouping.leaf_group, weights=counts["tokens"], minlength=grouping.n_groups)
    if cfg.total_tokens is not None:
        budgets = _split_budget(cfg, tokens)
    else:
        budgets = [cfg.tokens_per_expert] * grouping.n_groups
    return [{"group": g, "clusters": int((grouping.leaf_group == g).sum()), "documents": int(docs[g]),
             "tokens": int(tokens[g]), "budget": budgets[g]} for g in range(grouping.n_groups)]


def _split_budget(cfg: ExpertsConfig, tokens: np.ndarray) -> list[int]:
    """`total_tokens` as whole optimizer steps per expert, in proportion to the groups' tokens (largest
    remainders; at least one step each), so that the experts train exactly that many steps together."""
    from ..training import TrainConfig

    tcfg = TrainConfig(**cfg.train)
    per_step = tcfg.resolved("batch_size") * tcfg.resolved("block_size") * tcfg.grad_accum
    total = max(len(tokens), round(cfg.total_tokens / per_step))
    if total * per_step > 1.5 * cfg.total_tokens:
        logger.warning("%d experts train at least one step of %s tokens each: %s tokens in all, not the %s asked "
                       "for (raise it, or give fewer --groups)", len(tokens), f"{per_step:,}", f"{total * per_step:,}",
                       f"{cfg.total_tokens:,}")
    share = total * tokens / tokens.sum()
    steps = np.maximum(np.floor(share).astype(np.int64), 1)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    i = 0
    while steps.sum() < total:
        steps[order[i % len(order)]] += 1
        i += 1
    while steps.sum() > total:  # the at-least-one-step floors overshot: take from the largest
        steps[int(np.argmax(steps))] -= 1
    return [int(n) * per_step for n in steps]


def _shared_tokenizer(out: Path, cfg: ExpertsConfig, inputs, progress: bool) -> Path:
    """One tokenizer for every expert (so their losses compare and routing can mix them)."""
    from ..manifest import atomic_write_bytes
    from ..training import TrainConfig, train_tokenizer

    path = out / TOKENIZER
    if path.exists():
        return path
    if cfg.tokenizer:  # checked by `experts` before the folder was made
        atomic_write_bytes(path, Path(cfg.tokenizer).read_bytes())
        return path
    tcfg = TrainConfig(**cfg.train)
    if progress:
        import sys

        print("[impsamp] training the experts' shared tokenizer", file=sys.stderr, flush=True)
    train_tokenizer([f.path for f in inputs.corpus.files], tcfg.resolved("vocab_size"), path,
                    sample_docs=tcfg.tokenizer_sample_docs, text_field=inputs.corpus.text_field)
    return path


def _write_group_data(run: StageRun, inputs, grouping: Grouping, names: list[str], progress: bool,
                      ex: Execution) -> int:
    """Each group's units, with their text, as Parquet parts, one embedding shard at a time. Every expert reads
    every shard's part of its group, so each slice needs them all: it writes its own shards (index %
    --num-shards) first, then the others' from the last, each shard claimed (`guards.claim`) so that no two
    slices write one: one another slice holds is passed over, and waited for at the end. Slices running
    together write each shard once, a slice alone all of them. Returns how many it wrote."""
    order = [s for s in range(len(names)) if ex.mine(s)] + [s for s in reversed(range(len(names))) if not ex.mine(s)]
    bar = progress_bar(progress, "group data", "shard", total=len(names))
    written, held = 0, []
    for wait, shards in ((False, order), (True, held)):  # (`held` fills in the first pass)
        for s in shards:
            with claim(run.out_dir, names[s], wait=wait) as mine:
                if not mine:
                    held.append(s)
                    continue
                if not run.is_done(names[s]):
                    _write_shard_groups(run, inputs, grouping, s, names[s])
                    written += 1
            bar.update(1)
    bar.close()
    return written


def _write_shard_groups(run: StageRun, inputs, grouping: Grouping, s: int, name: str) -> None:
    """Embedding shard s's units, with their text, one Parquet part per group, committed as shard `name`."""
    from ..resampling.writing import selected_rows, write_output_shard

    shard = inputs.names[s]
    table = inputs.tables[shard]
    leaves = inputs.leaves[s]
    group = grouping.leaf_group[leaves]
    ones = np.ones(len(leaves), dtype=np.float32)
    files, rows = {}, {}
    for g in np.unique(group):
        reps = (group == g).astype(np.int64)
        part = selected_rows(inputs.corpus, inputs.corpus_shards[shard], table, reps, leaves, ones, inputs.windowed)
        rel = f"{data_dir(int(g))}/part-{s:05d}.parquet"
        tmp = run.tmp_path(rel)
        write_output_shard(tmp, part, "parquet")
        files[rel], rows[rel] = tmp, part.num_rows
    run.commit_shard(name, files, stats={"rows": rows}, rows=rows)


SMALL_GROUP = 4
"""A group with fewer encoder tokens than this many training sequences is tokenized before any expert
trains (`_refuse_small_groups`); the LM's tokens of a larger one are never that few."""


def _refuse_small_groups(out: Path, cfg: ExpertsConfig, groups: list[dict[str, Any]], tokenizer: Path) -> None:
    """Stop before the first expert trains if a group is too small for one training sequence, rather than
    when its turn comes, after the experts before it have trained. The groups that may be (few encoder
    tokens) are tokenized as their expert's run would, into a scratch folder."""
    import tempfile

    from ..training import load_tokenizer
    from ..training.data import TooLittleData, check_enough, tokenize_corpus

    tcfg = cfg.train_config(None, str(tokenizer))
    block = tcfg.resolved("block_size")
    small = [d["group"] for d in groups if d["tokens"] < SMALL_GROUP * (block + 1)]
    if not small:
        return
    tok = load_tokenizer(tokenizer)
    with tempfile.TemporaryDirectory(prefix="impsamp-groups-") as scratch:
        for g in small:
            try:
                bins = tokenize_corpus([str(out / data_dir(g))], tok, Path(scratch), f"g{g:03d}",
                                       val_fraction=tcfg.val_fraction)
                check_enough(bins["train"], block, "pretrain")
            except TooLittleData as e:
                raise _too_small(g, e.tokens, block) from None
            except CorpusError:  # no document with text at all
                raise _too_small(g, 0, block) from None


def _too_small(g: int, tokens: int, block: int) -> CorpusError:
    return CorpusError(f"expert {g}: its group holds {tokens:,} tokens, fewer than one sequence of {block} + 1; "
                       "make fewer, larger groups (--groups, or a level nearer the top with --level) or a smaller "
                       "block_size under [experts.train] of --config, and pass --overwrite")


def train_expert(g: int, out: str, cfg: ExpertsConfig, budget: int | None, tokenizer: str,
                 progress: bool) -> dict[str, Any]:
    """Pretrain group g's expert (resuming an interrupted one); returns what its shard record keeps."""
    from ..training import TrainRun, train
    from ..training.data import TooLittleData

    path = Path(out) / expert_dir(g)
    tcfg = cfg.train_config(budget, tokenizer)
    done = (path / MANIFEST).is_file()  # trained before a kill that came before its commit
    try:
        tr = TrainRun.load(path) if done else None
        if tr is None or tr.manifest.config != asdict(tcfg):  # (the folder is the experts' own: replaced freely)
            tr = train([str(Path(out) / data_dir(g))], path, tcfg, progress=progress, overwrite=True)
    except TooLittleData as e:  # (`_refuse_small_groups` finds it first)
        raise _too_small(g, e.tokens, e.block_size) from None
    return {"group": g, "fingerprint": tr.manifest.fingerprint, "train": tr.metrics["train"],
            "costs": tr.metrics["costs"]}


def _finish(run: StageRun, grouping: Grouping, groups: list[dict[str, Any]],
            embedding: dict[str, tuple[str, float]]) -> Experts:
    """The manifest: generic costs are the experts' pretraining and the generic corpus's embedding (what
    grouped its documents)."""
    out = run.out_dir
    files: dict[str, Path] = {GROUPS: out / GROUPS, TOKENIZER: out / TOKENIZER}
    total = Costs()
    per_expert = []
    for g in range(grouping.n_groups):
        rec = run.shard_record(f"expert-{g:03d}")["stats"]
        m = read_manifest(out / expert_dir(g), expect_stage="train")
        for ref in m.outputs:
            files[f"{expert_dir(g)}/{ref.path}"] = out / expert_dir(g) / ref.path
        files[f"{expert_dir(g)}/{MANIFEST}"] = out / expert_dir(g) / MANIFEST
        total = total + Costs.from_dict(rec["costs"])
        per_expert.append({**groups[g], "steps": rec["train"]["steps"], "trained_tokens": rec["train"]["tokens"],
                           "val_loss": rec["train"]["val_loss"]})
    one = Costs.from_dict(run.shard_record("expert-000")["stats"]["costs"])
    costs = Costs(generic=total.generic, inference_flops_per_token=one.inference_flops_per_token,
                  params_total=one.params_active * grouping.n_groups, params_active=one.params_active).paying(embedding)
    run.finish(stats={"groups": grouping.n_groups, "grouping": grouping.how, "per_group": per_expert,
                      "costs": costs.to_dict()}, extra_files=files)
    return Experts.load(out)
