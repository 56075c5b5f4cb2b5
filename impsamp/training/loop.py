"""`train()`: tokenizer, token memmaps, pretraining, optional fine-tuning, evaluation, a run directory.

    run = train(["runs/sel"], "runs/lm", TrainConfig(preset="tiny", steps=300),
                finetune=["law-sample.jsonl"], eval=["law-eval.jsonl"])
    run.metrics["finetuned"]["macro_ppl"]

The run directory follows the stage contract (`manifest.json` last). While it runs it also holds
`cache/` (token memmaps) and `checkpoints/` (model + optimizer + state, every `checkpoint_every`
steps); rerunning the same call after a kill resumes from the newest checkpoint and ends with the
same `model.safetensors` bytes as an uninterrupted run. Under `torchrun` every rank runs this
function: rank 0 checks the run directory, trains the tokenizer and tokenizes (the others wait for
it), then every rank trains its replica with DDP, pretraining and fine-tuning alike, on batches from
its own slice of the token memmap (data.Batches), so a step's global batch is batch_size x
grad_accum x world size sequences. Rank 0 alone writes checkpoints, metrics.jsonl, the validation
loss, the `eval` scores and the final files; the others wait at the end. A killed job resumes
from the newest checkpoint with the same world size (another one is refused).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import as_config
from ..io import as_specs
from ..costs import Costs
from ..guards import released_on_return
from ..manifest import MANIFEST, RUN_RECORD, StageRun, atomic_write_bytes, atomic_write_json
from ..outdir import moving
from ..progress import progress_bar
from .checkpoint import (CHECKPOINTS, PHASES, latest_checkpoint, load_checkpoint, load_weights, read_state,
                         save_checkpoint, save_weights)
from .conditioned import (GroupBatches, GroupBins, check_projected, clustered_corpus, conditioning_record,
                          count_groups, load_group_bins, tokenize_groups)
from .config import ModelConfig, TokenizerError, TrainConfig, TrainError, padded_vocab
from .data import Batches, TokenBin, check_enough, data_text_field, load_bins, tokenize_corpus
from .distill import Distilled
from .evaluation import check_eval_files, evaluate_model, stream_nll
from .families import build_model, param_groups
from .provenance import check_teacher, init_run, run_costs, run_inputs, with_init_defaults
from .result import PAYLOAD, TrainRun, last_window_loss, run_config
from .runtime import Runtime, check_memory
from .stopping import BEST, EarlyStop
from .tokenizer import LoadedTokenizer, file_sha256, load_tokenizer, train_tokenizer

CACHE = "cache"
GROUPS_CACHE = "cache/groups"


@dataclass
class Phase:
    name: str
    steps: int
    lr: float
    warmup: int
    batches: Batches | GroupBatches
    val: TokenBin | None
    """The held-out split (None: the batches score their own, `GroupBatches.val_nll`)."""
    stop: EarlyStop | None = None

    def lr_at(self, step: int, min_ratio: float) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _step_hook(phase: str, step: int) -> None:
    """Called after every optimizer step (and its checkpoint). Test hooks, unset in real runs:
    IMPSAMP_TEST_STEP_SLEEP=SECONDS slows a run down so a test can kill it;
    IMPSAMP_TEST_KILL_AT=PHASE:STEP[:RANK] SIGKILLs that rank (default 0) right after that step, a
    crash at a known point (under torchrun the agent then stops the other ranks)."""
    if delay := os.environ.get("IMPSAMP_TEST_STEP_SLEEP"):
        time.sleep(float(delay))
    if at := os.environ.get("IMPSAMP_TEST_KILL_AT"):
        name, at_step, *rank = at.split(":")
        me = int(os.environ.get("RANK", "0"))
        if (name, int(at_step), int(rank[0]) if rank else 0) == (phase, step, me):
            os.kill(os.getpid(), signal.SIGKILL)


def _finite(loss: float, phase: str, step: int) -> float:
    """The loss, unless training diverged: then an error, and the run is never committed as complete."""
    if not math.isfinite(loss):
        raise TrainError(f"training diverged: the {phase} loss is {loss} at step {step}; lower the learning "
                         "rate (--lr, or --finetune-lr) and pass --overwrite")
    return loss




@released_on_return
def train(data: Sequence[str | Path] | str | Path | None, out_dir: str | Path, config: TrainConfig | None = None,
          *, finetune: Sequence[str | Path] | None = None, eval: Sequence[str | Path] | None = None,
          progress: bool = False, overwrite: bool = False, resume: bool = False,
          base_costs: Costs | None = None, records: dict[str, Any] | None = None) -> TrainRun:
    """Pretrain a small LM on `data`, optionally fine-tune it on `finetune`, evaluate on `eval`.

    Args:
        data: any corpus `impsamp.io.open_corpus` reads (a `resample` selection, Parquet, JSONL...);
            None or empty with `config.init` (fine-tune a trained run only).
        out_dir: the run directory (created; an interrupted run with the same settings is resumed).
        finetune: the in-domain sample to fine-tune on after pretraining (`config.finetune_steps`).
        eval: files scored before and after fine-tuning; each is one domain of the macro average.
        overwrite: replace a complete run in `out_dir`.
        resume: require an interrupted run in `out_dir` to continue (it is resumed either way).
        base_costs: what the run's costs start from [default: the `init` run's costs] (a strategy
            that chose the init among several models passes what choosing cost).
        records: extra JSON files for the run directory ({name: object}), e.g. why it was chosen.

    Returns:
        The finished `TrainRun` (`metrics`: "train", "pretrained", "finetuned", see evaluation.py).
    """
    cfg = with_init_defaults(as_config(TrainConfig, config) or TrainConfig())
    rt = Runtime.start(cfg)
    try:
        run = _Trainer(cfg, rt, Path(out_dir), as_specs(data), as_specs(finetune), as_specs(eval),
                       progress, base_costs, dict(records or {})).run(overwrite, resume)
    except BaseException:
        rt.close()
        raise
    rt.close(finished=True)
    return run


@dataclass
class _Trainer:
    cfg: TrainConfig
    rt: Runtime
    out: Path
    data: list[str]
    finetune: list[str]
    eval: list[str]
    progress: bool
    base_costs: Costs | None = None
    records: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    init: TrainRun | None = None
    teacher: TrainRun | None = None

    @functools.cached_property
    def fields(self) -> tuple[str, str]:
        """The text fields of --data and --finetune: `text` for a selection, else --text-field."""
        return (data_text_field(self.data, self.cfg.text_field),
                data_text_field(self.finetune, self.cfg.text_field, "--finetune"))

    # ---- preparation (rank 0), shared with the other ranks through files

    def run(self, overwrite: bool, resume: bool) -> TrainRun:
        cfg, rt = self.cfg, self.rt
        check_projected(cfg, self.data, self.finetune, self.eval)
        if not self.data and not cfg.init and not cfg.clusters:
            raise TrainError("no training data given; pass --data with at least one file, folder or glob "
                             "(or --init RUN with --finetune to fine-tune a trained run)")
        if not self.data and not self.finetune and not cfg.clusters:
            raise TrainError(f"--init {cfg.init} without --data has nothing to train: pass --finetune "
                             "(the in-domain sample) or --data")
        self.init = init_run(cfg) if cfg.init else None
        self.teacher = check_teacher(cfg, self.init, bool(self.finetune)) if cfg.teacher else None
        user_tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
        if user_tok and cfg.vocab_size not in (None, user_tok.vocab_size):  # it sized nothing: it was recorded
            raise TokenizerError(f"--vocab-size {cfg.vocab_size}: --tokenizer {cfg.tokenizer} fixes the vocabulary "
                                 f"({user_tok.vocab_size:,} tokens); drop --vocab-size")
        guess = padded_vocab(user_tok.vocab_size if user_tok else cfg.resolved("vocab_size"))
        codes = count_groups(cfg.clusters, cfg.level) if cfg.clusters else None
        check_memory(cfg, self.init.model_config if self.init else cfg.model_config(guess, codes), rt)
        # Rank 0 alone checks the run directory, trains the tokenizer and tokenizes; the others wait
        # for its word (a barrier that also carries rank 0's error, so every rank stops with it).
        if rt.main:
            try:
                stage = self._begin(overwrite, resume)
                with stage.discarded_on_error():  # a bad file found while tokenizing: nothing left behind
                    self._prepare()
            except BaseException as e:
                with contextlib.suppress(Exception):  # never hide the error behind a broken group
                    rt.broadcast(f"{type(e).__name__}: {e}")
                raise
        failure = rt.broadcast(None)
        if failure is not None:
            raise TrainError(f"rank 0 stopped while preparing the run: {failure}")
        if not (self.out / "tokenizer.json").is_file():
            raise TrainError(f"rank {rt.rank} does not see {self.out / 'tokenizer.json'}, which rank 0 "
                             "wrote: with torchrun on several nodes --out must be on a shared filesystem")
        tok = load_tokenizer(self.out / "tokenizer.json")
        bins = {"pretrain": load_bins(self.out / CACHE, "pretrain")} if self.data else {}
        if self.finetune:
            bins["finetune"] = load_bins(self.out / CACHE, "finetune")
        groups = load_group_bins(self.out / GROUPS_CACHE) if cfg.clusters else None
        mcfg = self.init.model_config if self.init else cfg.model_config(
            padded_vocab(tok.vocab_size), groups.n_groups if groups else None)
        phases = self._phases(bins, mcfg, groups)
        if rt.main:
            atomic_write_json(self.out / "config.json", run_config(
                mcfg, cfg, world_size=rt.world, steps={p.name: p.steps for p in phases},
                tokenizer={"file": "tokenizer.json", "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                           "sha256": file_sha256(self.out / "tokenizer.json")},
                conditioning=conditioning_record(groups, phases[0].batches) if groups else None))
        metrics = self._train_phases(phases, mcfg, tok)
        if rt.main:
            metrics["costs"] = run_costs(mcfg, metrics, self.base_costs, self.init, self.data,
                                         cfg.pretrain_costs, self.teacher if cfg.alpha > 0 else None,
                                         clusters=cfg.clusters).to_dict()
            self._finish(stage, metrics)
        rt.barrier()
        return TrainRun.load(self.out)

    def _begin(self, overwrite: bool, resume: bool) -> StageRun:
        cfg, out = self.cfg, self.out
        interrupted = (out / RUN_RECORD).exists() and not (out / MANIFEST).exists() and not moving(out)
        if resume and not interrupted:
            raise TrainError(f"--resume: {out} holds no interrupted run to resume")
        record = json.loads((out / RUN_RECORD).read_text()) if interrupted else {}
        world_before = record.get("inputs", {}).get("world_size", self.rt.world)
        if interrupted and not overwrite and world_before != self.rt.world:
            raise TrainError(f"the interrupted run in {out} was started by {world_before} process(es) and "
                             f"this is {self.rt.world}; resume it with the same number (torchrun "
                             f"--nproc_per_node ... x --nnodes ... = {world_before}: each rank's batches and "
                             "the global batch depend on it), or pass --overwrite to start over")
        if interrupted and not overwrite and (out / "tokenizer.json").exists():
            before = record.get("config", {}).get("tokenizer")
            if cfg.tokenizer and file_sha256(cfg.tokenizer) != file_sha256(out / "tokenizer.json"):
                raise TokenizerError(f"--tokenizer {cfg.tokenizer} does not match the tokenizer of the "
                                     f"interrupted run in {out}; resume with the same tokenizer, or pass "
                                     "--overwrite to start over")
            if before and not cfg.tokenizer:
                raise TokenizerError(f"the interrupted run in {out} used --tokenizer {before}; pass it "
                                     "again to resume, or pass --overwrite to start over")
        inputs = run_inputs(cfg, self.data, self.fields[0], self.finetune, self.eval, self.init, self.base_costs,
                            self.rt.world, self.teacher, self.fields[1])
        read = [cfg.teacher, cfg.tokenizer, cfg.init, cfg.clusters]  # files --overwrite must not delete
        return StageRun(out, "train", config=asdict(cfg), inputs=inputs, overwrite=overwrite,
                        input_paths=[str(r) for r in read if r], unkeyed=("log_every", "checkpoint_every")).begin()

    def _prepare(self) -> None:
        cfg, out = self.cfg, self.out
        check_eval_files(self.eval, cfg.text_field)  # before the tokenizer is trained: a bad row fails first
        tok_file = out / "tokenizer.json"
        if not tok_file.exists():
            if self.init is not None:
                atomic_write_bytes(tok_file, self.init.tokenizer_path.read_bytes())
            elif cfg.tokenizer:
                atomic_write_bytes(tok_file, Path(cfg.tokenizer).read_bytes())
            else:
                paths, field = (self.data, self.fields[0]) if self.data else clustered_corpus(cfg.clusters)
                train_tokenizer(paths, cfg.resolved("vocab_size"), tok_file, sample_docs=cfg.tokenizer_sample_docs,
                                text_field=field)
        tok = load_tokenizer(tok_file)
        if cfg.clusters:
            tokenize_groups(cfg.clusters, cfg.level, tok, out / GROUPS_CACHE, val_fraction=cfg.val_fraction,
                            text_field=cfg.text_field)
        block = self.init.model_config.block_size if self.init else cfg.resolved("block_size")
        if self.data:
            bins = tokenize_corpus(self.data, tok, out / CACHE, "pretrain", text_field=self.fields[0],
                                   val_fraction=cfg.val_fraction)
            check_enough(bins["train"], block, "pretrain")
        if self.finetune:
            bins = tokenize_corpus(self.finetune, tok, out / CACHE, "finetune", text_field=self.fields[1],
                                   val_fraction=cfg.finetune_val())
            check_enough(bins["train"], block, "finetune")
            if cfg.early_stopping and bins["val"].tokens < 2:
                raise TrainError(f"--early-stopping: the held-out split of {', '.join(self.finetune)} is empty "
                                 f"(--finetune-val-fraction {cfg.finetune_val()}); raise it or give a larger sample")

    def _phases(self, bins: dict[str, dict[str, TokenBin]], mcfg: ModelConfig,
                groups: GroupBins | None = None) -> list[Phase]:
        cfg, rt = self.cfg, self.rt
        batch = cfg.resolved("batch_size")
        per_step = batch * mcfg.block_size * cfg.grad_accum * rt.world
        lr = cfg.resolved("lr")
        phases = []
        if groups is not None:
            steps = cfg.steps or -(-(cfg.tokens or sum(b.tokens for b in groups.train)) // per_step)
            warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(1000, steps // 20)
            batches = GroupBatches(groups, mcfg.block_size, batch, cfg.seed, cfg.condition, rank=rt.rank,
                                   world=rt.world)
            phases.append(Phase("pretrain", steps, lr, warmup, batches, None))
        if self.data:
            steps = cfg.steps or (-(-cfg.tokens // per_step) if cfg.tokens else
                                  max(1, -(-bins["pretrain"]["train"].tokens // per_step)))
            warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(1000, steps // 20)
            phases.append(Phase("pretrain", steps, lr, warmup, self._batches(bins["pretrain"], mcfg, 0),
                                bins["pretrain"]["val"]))
        if self.finetune:
            ft = cfg.finetune_steps or max(1, -(-bins["finetune"]["train"].tokens // per_step))
            stop = EarlyStop(cfg.early_stopping, cfg.eval_every or max(1, ft // 10)) if cfg.early_stopping else None
            warmup = cfg.finetune_warmup_steps if cfg.finetune_warmup_steps is not None else min(1000, ft // 20)
            phases.append(Phase("finetune", ft, cfg.finetune_lr or lr / 10, warmup,
                                self._batches(bins["finetune"], mcfg, 1), bins["finetune"]["val"], stop))
        return phases

    def _batches(self, b: dict[str, TokenBin], mcfg: ModelConfig, stream: int) -> Batches:
        return Batches(b["train"], mcfg.block_size, self.cfg.resolved("batch_size"), self.cfg.seed,
                       stream=stream, rank=self.rt.rank, world=self.rt.world)

    # ---- training

    def _train_phases(self, phases: list[Phase], mcfg: ModelConfig, tok: LoadedTokenizer) -> dict[str, Any]:
        cfg, rt = self.cfg, self.rt
        rt.seed(cfg.seed)
        model = build_model(cfg.arch, mcfg).to(rt.device)
        teacher = self.teacher.load_model(rt.device).requires_grad_(False) if self.teacher and cfg.alpha > 0 else None
        # a projected network's step leaves the codes and bases it does not use without gradient
        fwd = rt.wrap(model, find_unused_parameters=cfg.arch == "projected")
        ckpt = latest_checkpoint(self.out)
        state = read_state(ckpt) if ckpt else None
        if state is None and self.init is not None:
            load_weights(model, self.init.path / "model.safetensors")
        if rt.main:
            self._trim_log(state)
        metrics: dict[str, Any] = dict(state.get("metrics", {})) if state else {}
        done_phase = PHASES.index(state["phase"]) if state else -1
        for phase in phases:
            i = PHASES.index(phase.name)
            if i < done_phase:
                continue
            if phase.name == "finetune" and self.init is not None and self.eval and "pretrained" not in metrics \
                    and rt.main and not self.data:  # the --init model before fine-tuning
                metrics["pretrained"] = self._evaluate(model, mcfg, tok)
            opt = _optimizer(model, cfg, rt.device)
            start = 0
            if state is not None and i == done_phase:
                resumed = load_checkpoint(ckpt, model, opt)
                start = resumed["step"]
                if phase.stop is not None and resumed.get("early_stopping"):
                    phase.stop = EarlyStop.from_state(resumed["early_stopping"])
            step_fwd = Distilled(fwd, teacher, cfg.alpha, cfg.temperature) \
                if teacher is not None and phase.name == "finetune" else fwd
            self._run_phase(phase, model, step_fwd, opt, start, metrics)
            if phase.stop is not None:
                rt.barrier()  # rank 0 wrote the checkpoint holding the best weights
                load_weights(model, latest_checkpoint(self.out) / BEST)
                metrics["early_stopping"] = phase.stop.summary(phase.steps)
            rt.check_replicas(model, phase.name)
            if rt.main:
                metrics["train" if phase.name == "pretrain" else "train_finetune"] = self._phase_stats(phase)
                if self.eval:
                    metrics["pretrained" if phase.name == "pretrain" else "finetuned"] = self._evaluate(model, mcfg, tok)
                if phase.name == "pretrain" and self.finetune:
                    save_weights(model, self.out / "pretrained.safetensors")
        if rt.main:
            save_weights(model, self.out / "model.safetensors")
        return metrics

    def _evaluate(self, model: torch.nn.Module, mcfg: ModelConfig, tok: LoadedTokenizer) -> dict[str, Any]:
        return evaluate_model(model, tok, self.eval, block_size=mcfg.block_size,
                              batch_size=self.cfg.resolved("batch_size"), device=self.rt.device,
                              autocast=self.rt.autocast, text_field=self.cfg.text_field,
                              progress=self.progress and self.rt.main)

    def _run_phase(self, ph: Phase, model: torch.nn.Module, fwd: torch.nn.Module, opt: torch.optim.Optimizer,
                   start: int, metrics: dict[str, Any]) -> None:
        cfg, rt = self.cfg, self.rt
        accum = cfg.grad_accum
        per_step = ph.batches.batch_size * ph.batches.block_size * accum * rt.world
        params = [p for p in model.parameters() if p.requires_grad]
        bar = progress_bar(self.progress and rt.main, ph.name, "step", total=ph.steps, initial=start)
        loss_sum, n_steps, t_log = torch.zeros((), device=rt.device), 0, time.perf_counter()
        for step in range(start, ph.steps):
            if ph.stop is not None and ph.stop.stopped:
                break
            for g in opt.param_groups:
                g["lr"] = ph.lr_at(step, cfg.min_lr_ratio)
            for micro in range(accum):
                x, y, *cond = ph.batches.get(step, micro, rt.device)
                sync = not rt.ddp or micro == accum - 1
                with contextlib.nullcontext() if sync else fwd.no_sync():
                    with rt.autocast():
                        loss = fwd(x, y, cond=cond[0]) if cond else fwd(x, y)
                    (loss / accum).backward()
                loss_sum += loss.detach() / accum
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
            opt.step()
            opt.zero_grad(set_to_none=True)
            n_steps += 1
            done = step + 1
            is_val = ph.stop is not None and ph.stop.due(done, ph.steps)
            is_ckpt = done % cfg.checkpoint_every == 0 or done == ph.steps or is_val
            # A line at every checkpoint too: a resumed run's loss windows start where the
            # uninterrupted run's do, so both write the same losses.
            is_log = done % cfg.log_every == 0 or is_ckpt
            rec: dict[str, Any] = {"phase": ph.name, "step": done}
            if is_log:  # every rank (all reach the same steps): the loss is averaged over ranks
                loss_val = _finite(rt.mean(loss_sum / n_steps), ph.name, done)
                speed = n_steps * per_step / (time.perf_counter() - t_log)
                rec.update(loss=round(loss_val, 6), lr=opt.param_groups[0]["lr"], tokens=done * per_step,
                           tokens_per_s=round(speed, 1), time=round(time.time(), 3),
                           grad_norm=None if norm is None else round(float(norm), 4))
                loss_sum.zero_()
                n_steps, t_log = 0, time.perf_counter()
                if self.progress and rt.main:
                    bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{speed:,.0f}")
            if is_ckpt and rt.main:
                t0 = time.perf_counter()
                rec["val_loss"] = self._val_loss(ph, model, whole=is_val)
                self._append_log(rec)
                extra, best = self._stop_state(ph, done, rec["val_loss"] if is_val else None, model)
                save_checkpoint(self.out, ph.name, done, model, opt,
                                {"metrics": metrics, "data": {"sampler": "seeded random windows",
                                                              "next_step": done, "tokens": done * per_step},
                                 **extra}, best=best)
                t_log += time.perf_counter() - t0  # checkpoints do not count against tokens/s
            elif is_log and rt.main:
                self._append_log(rec)
            if is_val and rt.ddp:  # every rank stops where rank 0 decided
                ph.stop = EarlyStop.from_state(rt.broadcast(ph.stop.state() if rt.main else None))
            bar.update(1)
            _step_hook(ph.name, done)
        bar.close()

    def _val_loss(self, ph: Phase, model: torch.nn.Module, whole: bool = False) -> float | None:
        """Loss on the held-out split: `eval_batches` batches of it, or all of it (`whole`)."""
        cap = None if whole else self.cfg.eval_batches * ph.batches.batch_size
        if ph.val is None:
            nats, n = ph.batches.val_nll(model, self.rt.device, self.rt.autocast, cap)
            return round(nats / n, 6) if n else None
        if ph.val.tokens < 2:
            return None
        nats, n = stream_nll(model, ph.val.array(), ph.batches.block_size, ph.batches.batch_size,
                             self.rt.device, self.rt.autocast, max_windows=cap)
        return round(nats / n, 6)

    def _stop_state(self, ph: Phase, step: int, val_loss: float | None, model: torch.nn.Module
                    ) -> tuple[dict[str, Any], tuple[str, torch.nn.Module | Path] | None]:
        """Early stopping's part of a checkpoint: its state, and the best weights to keep beside it (these,
        at a validation (`val_loss` given) that improved, else the previous checkpoint's copy). Every
        checkpoint of the phase carries both, one at a validation or not: saving a checkpoint deletes the
        older ones, and a run resumed from any of them keeps its best loss, patience and best weights."""
        if ph.stop is None:
            return {}, None
        improved = val_loss is not None and ph.stop.update(step, val_loss)
        previous = latest_checkpoint(self.out)
        held = previous / BEST if previous is not None and (previous / BEST).is_file() else None
        if improved or held is None and val_loss is not None:
            return {"early_stopping": ph.stop.state()}, (BEST, model)
        return {"early_stopping": ph.stop.state()}, None if held is None else (BEST, held)

    # ---- the metrics log and the run directory

    def _trim_log(self, state: dict[str, Any] | None) -> None:
        """Keep the log lines up to the checkpoint being resumed (all of them go on a fresh start)."""
        path, keep = self.out / "metrics.jsonl", []
        if state is not None and path.exists():
            limit = (PHASES.index(state["phase"]), state["step"])
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    rec = json.loads(line)
                    if (PHASES.index(rec["phase"]), rec["step"]) <= limit:
                        keep.append(rec)
        self.log = keep
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())

    def _append_log(self, rec: dict[str, Any]) -> None:
        self.log.append(rec)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def _phase_stats(self, ph: Phase) -> dict[str, Any]:
        recs = [r for r in self.log if r["phase"] == ph.name and "loss" in r]
        vals = [r["val_loss"] for r in self.log if r["phase"] == ph.name and r.get("val_loss") is not None]
        speeds = [r["tokens_per_s"] for r in recs]
        # (a phase that stopped early ends at its last line)
        return {"steps": recs[-1]["step"] if recs else ph.steps, "tokens": recs[-1]["tokens"] if recs else 0,
                "final_loss": last_window_loss(recs, self.cfg.log_every), "val_loss": vals[-1] if vals else None,
                "tokens_per_s": round(sum(speeds) / len(speeds), 1) if speeds else None, "lr": ph.lr}

    def _finish(self, stage: StageRun, metrics: dict[str, Any]) -> None:
        out = self.out
        atomic_write_json(out / "eval.json", metrics)
        for name, obj in self.records.items():
            atomic_write_json(out / name, obj)
        files = list(PAYLOAD) + list(self.records) + (["pretrained.safetensors"] if self.data and self.finetune
                                                       else [])
        ckpt = latest_checkpoint(out)
        if self.cfg.keep_checkpoints and ckpt is not None:
            files += [str(p.relative_to(out)) for p in sorted(ckpt.iterdir())]
        else:
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        shutil.rmtree(out / CACHE, ignore_errors=True)
        stage.finish(stats=metrics, extra_files={f: out / f for f in files})


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the model family's parameter groups (decay on matrices only by default), fused on CUDA."""
    groups = param_groups(model, cfg.weight_decay)
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.resolved("lr"), betas=(cfg.beta1, cfg.beta2), eps=1e-8, **extra)
