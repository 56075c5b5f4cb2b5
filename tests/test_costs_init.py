"""Shared pieces of the strategies: `--init`, early stopping with the best weights kept, cost accounting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ._helpers import TRAIN_FLAGS, invoke, ok, one_line_error, write_corpus

pytest.importorskip("torch")

# TRAIN_FLAGS: 2 layers, width 32, 2 heads, MLP 64, context 32, BPE 300, batch 4
L, D, H, T, B = 2, 32, 64, 32, 4


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("costs")
    data = write_corpus(root / "generic.jsonl", 200)
    sample = write_corpus(root / "bio.jsonl", 80, seed=3, topics=("bio",))
    run = root / "base"
    # float32 on every CPU: the early-stopping test rescores in float32 and needs its loss to rise at lr 1.0
    ok(invoke("train", "--data", data, "--out", run, *TRAIN_FLAGS, "--steps", "5", "--dtype", "float32"))
    return {"root": root, "data": data, "sample": sample, "run": run}


def test_costs_match_a_hand_count(base):
    from impsamp.costs import Costs
    from impsamp.training import TrainRun

    run = TrainRun.load(base["run"])
    v = run.model_config.vocab_size
    assert v % 64 == 0 and v >= 300
    params = v * D + L * (4 * D * D + 3 * D * H + 2 * D) + D  # tied embedding, RMSNorm weights
    per_token = 6 * params + 12 * L * D * T                    # forward + backward, plus attention
    tokens = 5 * B * T
    c = Costs.from_dict(run.metrics["costs"])
    assert c.params_total == c.params_active == params == sum(
        p.numel() for p in run.load_model().parameters())
    assert c.generic == per_token * tokens and c.per_target == 0
    assert c.inference_flops_per_token == pytest.approx(per_token / 3)
    assert c.total(10) == c.generic
    out = ok(invoke("info", base["run"])).output
    assert "generic (paid once)" in out and f"{params:,} total" in out


def test_evaluate_takes_a_runs_handle_and_refuses_no_file_and_an_unknown_device(base):
    import impsamp
    from impsamp.training import TrainRun

    by_path = impsamp.evaluate(base["run"], [base["sample"]], device="cpu")
    assert impsamp.evaluate(TrainRun.load(base["run"]), str(base["sample"]), device="cpu") == by_path
    from pathlib import PurePosixPath

    from impsamp.training import evaluate as evaluate_dense

    for files in ([], (f for f in [])):  # was a perplexity of 0.0, from every scorer
        with pytest.raises(impsamp.ConfigError, match="at least one evaluation file"):
            impsamp.evaluate(base["run"], files)
    with pytest.raises(impsamp.ConfigError, match="at least one evaluation file"):
        evaluate_dense(base["run"], [])
    assert evaluate_dense(TrainRun.load(base["run"]), [base["sample"]], device="cpu") == by_path
    assert impsamp.evaluate(PurePosixPath(base["run"]), [base["sample"]], device="cpu") == by_path
    with pytest.raises(impsamp.ConfigError, match="--device 'tpu' is unknown; valid: auto, cpu"):
        impsamp.evaluate(base["run"], [base["sample"]], device="tpu")
    with pytest.raises(impsamp.ConfigError, match="give a run's folder"):
        impsamp.evaluate(3, [base["sample"]])


def test_flops_are_written_with_three_digits_in_any_unit():
    from impsamp.costs import format_flops

    got = [format_flops(x) for x in (19e12, 9.66e12, 123e9, 999.7e12, 999.4e12, 5.04e6, 5e5, 0.0)]
    assert got == ["19.0 TFLOP", "9.66 TFLOP", "123 GFLOP", "1.00 PFLOP", "999 TFLOP", "5.04 MFLOP", "500 kFLOP",
                   "0 FLOP"]


def test_init_continues_from_the_given_weights(base, tmp_path):
    from impsamp.costs import Costs
    from impsamp.training import TrainRun, evaluate

    out = tmp_path / "ft"
    r = ok(invoke("train", "--init", base["run"], "--finetune", base["sample"], "--eval", base["sample"],
                  "--out", out, "--finetune-steps", "3", "--device", "cpu", "--no-progress", "--batch-size", "4",
                  "--dtype", "float32"))  # the --init run's precision: scored before, it must match evaluate()
    assert "fine-tuned" in r.output and "before fine-tuning (the --init run's weights): macro ppl" in r.output
    run = TrainRun.load(out)
    # scored before fine-tuning: exactly the --init run's model
    before = evaluate(base["run"], [base["sample"]], device="cpu")
    assert run.metrics["pretrained"]["macro_ppl"] == pytest.approx(before["macro_ppl"], rel=1e-9)
    assert (out / "tokenizer.json").read_bytes() == (base["run"] / "tokenizer.json").read_bytes()
    assert run.model_config == TrainRun.load(base["run"]).model_config
    # and it carries the init's generic cost, adding its own fine-tuning as per-target
    c, c0 = Costs.from_dict(run.metrics["costs"]), Costs.from_dict(TrainRun.load(base["run"]).metrics["costs"])
    assert c.generic == c0.generic and c.finetuning == 3 * 4 * T * (6 * c.params_total + 12 * L * D * T)
    # a shape flag that contradicts the run, and a run that is not one, are one-line errors
    one_line_error(invoke("train", "--init", base["run"], "--finetune", base["sample"], "--out", tmp_path / "x",
                          "--n-embd", "64"), "--n-embd 64")
    one_line_error(invoke("train", "--init", base["run"], "--finetune", base["sample"], "--out", tmp_path / "x",
                          "--preset", "tiny-large"), "preset tiny", "drop --preset tiny-large")
    size = TrainRun.load(base["run"]).load_tokenizer().vocab_size  # the run's tokenizer is used: --vocab-size sized nothing
    one_line_error(invoke("train", "--init", base["run"], "--finetune", base["sample"], "--out", tmp_path / "x",
                          "--vocab-size", size + 100), f"--vocab-size {size + 100} (its tokenizer has {size:,} tokens)")
    assert not (tmp_path / "x").exists()
    one_line_error(invoke("train", "--init", tmp_path, "--finetune", base["sample"], "--out", tmp_path / "y"),
                   "--init")
    one_line_error(invoke("train", "--init", base["run"], "--out", tmp_path / "z"), "--finetune")


def test_early_stopping_keeps_the_best_weights(base, tmp_path):
    import torch

    from impsamp.training import TrainRun
    from impsamp.training.data import tokenize_corpus
    from impsamp.training.evaluation import stream_nll

    out = tmp_path / "es"
    ok(invoke("train", "--init", base["run"], "--finetune", base["sample"], "--out", out, "--finetune-steps", "40",
              "--finetune-lr", "1.0", "--early-stopping", "2", "--eval-every", "2", "--finetune-val-fraction", "0.25",
              "--device", "cpu", "--no-progress", "--batch-size", "4", "--dtype", "float32",
              "--checkpoint-every", "3"))  # checkpoints between validations (they carry the best weights on)
    run = TrainRun.load(out)
    stop = run.metrics["early_stopping"]
    vals = [r["val_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r.get("val_loss") is not None]
    # a learning rate this high makes the loss go up (at 0.3 it fell on an AMX Xeon): it stopped early, after `patience` worse validations
    assert stop["stopped_at"] is not None and stop["stopped_at"] < 40
    assert stop["best_val_loss"] == min(vals) < vals[-1]
    assert run.metrics["train_finetune"]["steps"] == stop["stopped_at"]
    # the final weights are the best ones: they score the best validation loss on the held-out split
    bins = tokenize_corpus([base["sample"]], run.load_tokenizer(), tmp_path / "cache", "ft", val_fraction=0.25)
    nats, n = stream_nll(run.load_model(), bins["val"].array(), T, 4, torch.device("cpu"))
    assert round(nats / n, 6) == pytest.approx(stop["best_val_loss"], abs=2e-6)
    # fine-tuning FLOPs count the steps that ran, not the planned 40
    assert run.metrics["costs"]["finetuning"] == pytest.approx(
        stop["stopped_at"] * 4 * T * (6 * run.model_config.n_params() + 12 * L * D * T))


def test_early_stopping_resumes_to_the_same_bytes(base, tmp_path):
    from ._helpers import run_sub

    args = ["train", "--init", base["run"], "--finetune", base["sample"], "--finetune-steps", "12",
            "--finetune-lr", "0.05", "--early-stopping", "2", "--eval-every", "2", "--finetune-val-fraction", "0.25",
            "--device", "cpu", "--no-progress", "--batch-size", "4", "--checkpoint-every", "3"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_sub(*args, "--out", whole).returncode == 0
    # killed after the checkpoint of step 3, which falls between validations (2, 4): it resumes with the
    # stopping state of step 2 (a fresh one forgot a validation, and the best weights were lost)
    r = run_sub(*args, "--out", killed, env={"IMPSAMP_TEST_KILL_AT": "finetune:3"})
    assert r.returncode != 0
    r = run_sub(*args, "--out", killed)
    assert r.returncode == 0, r.stderr
    assert (killed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    a, b = (json.loads((d / "eval.json").read_text())["early_stopping"] for d in (whole, killed))
    assert a == b
    assert np.isfinite(a["best_val_loss"])


def test_fine_tuning_flags_without_a_sample_are_named_as_ignored(base, tmp_path):
    r = ok(invoke("train", "--data", base["data"], "--out", tmp_path / "w", *TRAIN_FLAGS, "--steps", "2",
                  "--early-stopping", "2", "--finetune-lr", "0.01"))
    assert "warning: --finetune-lr, --early-stopping ignored: no --finetune sample" in r.output, r.output


def test_fine_tuning_warms_up_as_its_own_flag_says(base, tmp_path):
    """--warmup-steps is pretraining's (it was silently ignored by a fine-tuning-only run, whose warm-up stayed
    min(1000, steps/20)); --finetune-warmup-steps sets fine-tuning's."""
    out = tmp_path / "wu"
    r = ok(invoke("train", "--init", base["run"], "--finetune", base["sample"], "--out", out, "--finetune-steps", "6",
                  "--finetune-lr", "0.01", "--finetune-warmup-steps", "3", "--warmup-steps", "0", "--log-every", "1",
                  "--device", "cpu", "--no-progress", "--batch-size", "4", "--steps", "500"))
    assert "warning: --steps, --warmup-steps ignored: no --data to pretrain on" in r.output
    lrs = [rec["lr"] for rec in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in rec]
    assert lrs[:4] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01]) and lrs[4] < 0.01  # then the cosine


def test_the_python_api_fine_tunes_an_init_run_with_its_own_preset_and_family(base, tmp_path):
    """`TrainConfig(init=RUN)` takes the run's preset (its learning rate and batch defaults) and family, as
    `impsamp train --init RUN` does: the two fine-tune the same model the same way."""
    from impsamp.errors import ConfigError
    from impsamp.training import TrainConfig, TrainRun, train
    from impsamp.training.provenance import with_init_defaults

    large = tmp_path / "large"  # a run of another preset than the default (its shape from the flags)
    ok(invoke("train", "--data", base["data"], "--out", large, *TRAIN_FLAGS, "--steps", "2", "--preset", "tiny-large",
              "--dtype", "float32", "--lr", "0.002"))
    # its own lr and batch too, where it set them (a specialized expert fine-tuned at its preset's lr / 10)
    cfg = with_init_defaults(TrainConfig(init=str(large), finetune_steps=2))
    assert (cfg.preset, cfg.arch, cfg.resolved("lr"), cfg.resolved("batch_size")) == ("tiny-large", "dense", 0.002, 4)
    assert with_init_defaults(TrainConfig(init=str(large), lr=1e-4, batch_size=8)).resolved("lr") == 1e-4
    with pytest.raises(ConfigError, match="drop --preset mini"):
        with_init_defaults(TrainConfig(init=str(large), preset="mini"))
    api = train(None, tmp_path / "api", TrainConfig(init=str(large), finetune_steps=2, device="cpu", dtype="float32",
                                                    batch_size=4), finetune=[base["sample"]])
    ok(invoke("train", "--init", large, "--finetune", base["sample"], "--out", tmp_path / "cli", "--finetune-steps",
              "2", "--device", "cpu", "--dtype", "float32", "--batch-size", "4", "--no-progress"))
    via_cli = TrainRun.load(tmp_path / "cli")
    assert api.config == via_cli.config and api.config.preset == "tiny-large"
    assert (api.path / "model.safetensors").read_bytes() == (via_cli.path / "model.safetensors").read_bytes()
    # a config file's preset was overridden by the run's without a word; an explicit --preset of the default too
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\npreset = "slm-126m"\n')
    one_line_error(invoke("train", "--init", large, "--finetune", base["sample"], "--out", tmp_path / "t",
                          "--config", toml), "fixes the model (preset tiny-large)", "slm-126m")
    one_line_error(invoke("train", "--init", large, "--finetune", base["sample"], "--out", tmp_path / "t",
                          "--preset", "tiny"), "fixes the model (preset tiny-large): drop --preset tiny")
    assert not (tmp_path / "t").exists()


def test_one_time_work_is_counted_once_however_many_runs_inherit_it():
    """Embedding the generic corpus (and making a selection) is paid once: a run that starts from another's
    costs, adds a teacher's, or pays for it again counts it once; the record survives the JSON round trip."""
    from impsamp.costs import Costs

    student = Costs(generic=100.0, pretraining=10.0).paying({"embed:E": ("generic", 50.0), "select:S": ("selection", 7.0)})
    assert (student.generic, student.selection) == (150.0, 7.0)
    assert student.paying({"embed:E": ("generic", 50.0)}) == student  # paid already
    teacher = Costs(generic=300.0, finetuning=5.0).paying({"embed:E": ("generic", 50.0)})
    distilled = student.with_teacher(teacher, forward=2.0)
    assert distilled.generic == 150.0 + 350.0 - 50.0 and distilled.paid == student.paid
    assert distilled.teacher == 5.0 + 2.0
    # a teacher pretrained on the student's own selection: the selection is counted once (the student's)
    same = Costs(generic=300.0, pretraining=20.0).paying({"embed:E": ("generic", 50.0), "select:S": ("selection", 7.0)})
    distilled = student.with_teacher(same, forward=2.0)
    assert (distilled.selection, distilled.teacher, distilled.generic) == (7.0, 20.0 + 2.0, 150.0 + 300.0)
    # a teacher of another selection: its selection is the teacher's, and recorded as paid
    other = Costs(pretraining=20.0).paying({"select:T": ("selection", 9.0)})
    distilled = student.with_teacher(other, forward=0.0)
    assert distilled.teacher == 29.0 and "select:T" in distilled.paid
    both = student + teacher
    assert both.generic == 150.0 + 350.0 - 50.0 and both.selection == 7.0 and both.finetuning == 5.0
    assert Costs.from_dict(json.loads(json.dumps(student.to_dict()))) == student


def test_a_finished_fine_tuning_is_reused_only_from_the_same_init_run(base, tmp_path):
    """`finished_run` (what a resumed compare reuses) judged a fine-tuned run by its settings and files: a run
    it started from, remade in place since (a projected network's small model re-projected), went unseen."""
    from impsamp.training import TrainConfig, train
    from impsamp.training.provenance import finished_run, with_init_defaults

    start = tmp_path / "start"
    ok(invoke("train", "--data", base["data"], "--out", start, *TRAIN_FLAGS, "--steps", "2", "--dtype", "float32"))
    cfg = TrainConfig(init=str(start), finetune_steps=2, device="cpu", dtype="float32")
    ft = train(None, tmp_path / "ft", cfg, finetune=[base["sample"]])
    assert finished_run(ft.path, with_init_defaults(cfg), [], [base["sample"]]).path == ft.path
    ok(invoke("train", "--data", base["data"], "--out", start, *TRAIN_FLAGS, "--steps", "3", "--dtype", "float32",
              "--overwrite"))  # the same path, another run
    assert finished_run(ft.path, with_init_defaults(cfg), [], [base["sample"]]) is None
