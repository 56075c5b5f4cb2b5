"""Distillation (the seed paper's SLM-d) and the large preset."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._helpers import TRAIN_FLAGS, invoke, ok, one_line_error, with_and_without_text_field, write_corpus

torch = pytest.importorskip("torch")

FT = ["--finetune-steps", "3", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    p = {"generic": write_corpus(root / "generic.jsonl", 120),
         "target": write_corpus(root / "bio.jsonl", 40, seed=1, topics=("bio",), ids=False),
         "student": root / "student", "teacher0": root / "teacher0", "teacher": root / "teacher", "root": root}
    ok(invoke("train", "--data", p["generic"], "--out", p["student"], "--steps", "4", *TRAIN_FLAGS))
    tok = p["student"] / "tokenizer.json"
    big = [f if f != "32" else "64" for f in TRAIN_FLAGS]  # twice the width, same tokenizer
    ok(invoke("train", "--data", p["generic"], "--out", p["teacher0"], "--steps", "4", "--tokenizer", tok, *big))
    ok(invoke("train", "--init", p["teacher0"], "--finetune", p["target"], "--out", p["teacher"], *FT))
    return p


def test_distillation_loss_is_zero_for_the_same_weights():
    from impsamp.training.distill import Distilled, distillation_loss
    from impsamp.training.model import GPT
    from impsamp.training.shape import ModelConfig

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, n_layer=1, n_embd=16, n_head=2, mlp_hidden=32, block_size=8))
    x, y = torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))
    logits = model(x)
    assert distillation_loss(logits, logits.clone(), 2.0).item() == 0.0
    assert Distilled(model, model, alpha=1.0, temperature=3.0)(x, y).item() == 0.0
    other = GPT(model.config)
    assert Distilled(model, other, alpha=1.0, temperature=2.0)(x, y).item() > 0
    mixed = Distilled(model, other, alpha=0.25, temperature=2.0)(x, y)
    want = 0.75 * model(x, y) + 0.25 * distillation_loss(model(x), other(x), 2.0)
    torch.testing.assert_close(mixed, want)


def test_alpha_zero_is_plain_fine_tuning_bit_for_bit(runs):
    r = runs["root"]
    ok(invoke("train", "--init", runs["student"], "--finetune", runs["target"], "--out", r / "plain", *FT))
    ok(invoke("distill", "--teacher", runs["teacher"], "--student", runs["student"], "--target", runs["target"],
              "--alpha", "0", "--out", r / "a0", *FT))
    assert (r / "a0" / "model.safetensors").read_bytes() == (r / "plain" / "model.safetensors").read_bytes()
    res = ok(invoke("distill", "--teacher", runs["teacher"], "--student", runs["student"], "--target",
                    runs["target"], "--alpha", "0.5", "--out", r / "a5", "--eval", runs["target"], *FT))
    assert "teacher" in res.output
    assert (r / "a5" / "model.safetensors").read_bytes() != (r / "plain" / "model.safetensors").read_bytes()


def test_the_teacher_is_counted_in_the_costs(runs):
    from impsamp import distill
    from impsamp.costs import forward_flops
    from impsamp.training import TrainRun

    out = runs["root"] / "costs"
    run = distill(runs["teacher"], runs["student"], runs["target"], out, alpha=0.5,
                  config={"finetune_steps": 2, "device": "cpu"})  # a dict of TrainConfig's fields, as anywhere
    teacher, student = TrainRun.load(runs["teacher"]), TrainRun.load(runs["student"])
    c, t, s = run.metrics["costs"], teacher.metrics["costs"], student.metrics["costs"]
    tokens = run.metrics["train_finetune"]["tokens"]
    assert c["generic"] == s["generic"] + t["generic"]
    assert c["teacher"] == pytest.approx(t["per_target"] + forward_flops(teacher.model_config, tokens))
    assert c["params_active"] == student.model_config.n_params() < teacher.model_config.n_params()


def test_teacher_with_another_tokenizer_or_no_sample_is_refused(runs, tmp_path):
    other = tmp_path / "other"
    ok(invoke("train", "--data", runs["target"], "--out", other, "--steps", "2", *TRAIN_FLAGS))
    one_line_error(invoke("distill", "--teacher", other, "--student", runs["student"], "--target", runs["target"],
                          "--out", tmp_path / "d", *FT), "another tokenizer")
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    one_line_error(invoke("distill", "--teacher", tmp_path / "nope", "--student", runs["student"], "--target",
                          runs["target"], "--out", tmp_path / "e", *FT), "--teacher")
    one_line_error(invoke("distill", "--teacher", runs["teacher"], "--student", runs["student"], "--target",
                          runs["target"], "--alpha", "1.5", "--out", tmp_path / "f", *FT), "--alpha")


def test_large_preset_is_about_five_times_tiny():
    from impsamp.training import TrainConfig

    tiny, large = TrainConfig().model_config(4096), TrainConfig(preset="tiny-large").model_config(4096)
    assert 4 <= large.n_params() / tiny.n_params() <= 6
    assert 4 <= large.flops_per_token() / tiny.flops_per_token() <= 6


def test_text_field_reads_a_sample_whose_text_is_elsewhere(runs, tmp_path):
    def args(t, out):
        return ["distill", "--teacher", runs["teacher"], "--student", runs["student"], "--target", t, *FT,
                "--alpha", "0", "--out", out]

    yes, ref = with_and_without_text_field(args, Path(runs["target"]), tmp_path)
    assert (yes / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()  # the same model


def test_overwrite_never_deletes_the_teacher_or_the_tokenizer_it_reads(runs, tmp_path):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(runs["teacher"], teacher)
    one_line_error(invoke("distill", "--teacher", teacher, "--student", runs["student"], "--target", runs["target"],
                          "--out", teacher, "--overwrite", *FT), "also an input of this run")
    assert (teacher / "model.safetensors").is_file() and (teacher / "manifest.json").is_file()
    one_line_error(invoke("train", "--data", runs["target"], "--tokenizer", teacher / "tokenizer.json",
                          "--out", teacher, "--overwrite", "--steps", "2", *TRAIN_FLAGS), "also an input of this run")
    assert (teacher / "tokenizer.json").is_file() and (teacher / "model.safetensors").is_file()
    assert oct((teacher / "model.safetensors").stat().st_mode & 0o777) != "0o600"  # readable like the rest


def test_a_shared_config_files_pretraining_settings_are_said_unused(runs, tmp_path, caplog):
    """`[train]` of a config file shared with `train` (steps, shape): distill only fine-tunes the student, so they
    were dropped without a word (a shape was refused naming --init, a flag distill has not); now one warning
    names them, and the file's fine-tuning settings are used."""
    conf = tmp_path / "run.toml"
    conf.write_text("[train]\nsteps = 50\nn_layer = 4\nfinetune_steps = 2\n")
    with caplog.at_level("WARNING", logger="impsamp.distillation"):
        ok(invoke("distill", "--teacher", runs["teacher"], "--student", runs["student"], "--target", runs["target"],
                  "--out", tmp_path / "d", "--config", conf, "--device", "cpu", "--no-progress"))
    said = [r.getMessage() for r in caplog.records if r.name == "impsamp.distillation"]
    assert len(said) == 1 and said[0].startswith("distill does not use steps, n_layer: the student"), said
    from impsamp.training import TrainRun

    run = TrainRun.load(tmp_path / "d")
    assert run.metrics["train_finetune"]["steps"] == 2 and run.config.n_layer is None
