"""The bundled trainer: loss falls, kill + resume is exact, HF export, DDP, bad input, evaluate."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from click.testing import CliRunner  # noqa: E402

from impsamp.training import TrainConfig, TrainRun, evaluate, train, train_tokenizer  # noqa: E402
from impsamp.training.config import TokenizerError  # noqa: E402
from impsamp.training.tokenizer import load_tokenizer  # noqa: E402

pytestmark = pytest.mark.slow

MICRO = dict(n_layer=2, n_embd=32, n_head=2, mlp_hidden=64, block_size=32, vocab_size=300, batch_size=4,
             log_every=2)
MICRO_FLAGS = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--mlp-hidden", "64",
               "--block-size", "32", "--vocab-size", "300", "--batch-size", "4", "--log-every", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"}

ANIMALS = ["the cat", "a dog", "the old horse", "a small bird", "the brown fox", "my goat"]
VERBS = ["sleeps in", "runs to", "looks at", "walks around", "jumps over", "sits by"]
PLACES = ["the barn", "the green field", "the river", "a quiet farm", "the tall tree", "the hill"]
CODE = ["def f(x):", "    return x + 1", "for i in range(10):", "    print(i)", "import os", "x = [1, 2, 3]"]


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _farm_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"{rng.choice(ANIMALS)} {rng.choice(VERBS)} {rng.choice(PLACES)}." for _ in range(8))
            for _ in range(n)]


def _code_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["\n".join(rng.choice(CODE) for _ in range(10)) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    return {"farm": _write_jsonl(d / "farm.jsonl", _farm_docs(40, 0)),
            "code": _write_jsonl(d / "code.jsonl", _code_docs(30, 1)),
            "farm_eval": _write_jsonl(d / "farm_eval.jsonl", _farm_docs(6, 2)),
            "code_eval": _write_jsonl(d / "code_eval.jsonl", _code_docs(6, 3))}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> TrainRun:
    out = tmp_path_factory.mktemp("runs") / "lm"
    cfg = TrainConfig(**MICRO, steps=30, lr=3e-3, finetune_steps=6, checkpoint_every=10)
    return train([corpus["farm"], corpus["code"]], out, cfg, finetune=[corpus["farm"]],
                 eval=[corpus["farm_eval"], corpus["code_eval"]])


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env={**ENV, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (torchrun starts its workers in their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    for pid in [proc.pid, *_descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _kill_when(proc: subprocess.Popen, run_dir: Path, pattern: str, timeout: float = 90) -> None:
    """SIGKILL the process group of `proc` as soon as a checkpoint matching `pattern` exists."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list((run_dir / "checkpoints").glob(pattern)):
            _kill_tree(proc)
            return
        time.sleep(0.05)
    out = proc.communicate()[0] if proc.poll() is not None else ""
    _kill_tree(proc)
    pytest.fail(f"no checkpoint {pattern} appeared before the run ended: {out}")


# ----------------------------------------------------------------------------- training


def test_the_final_loss_is_the_last_log_window_whatever_the_checkpoints():
    from impsamp.training.result import last_window_loss as _last_window_loss

    def lines(*pairs):
        return [{"step": s, "loss": v} for s, v in pairs]

    plain = _last_window_loss(lines((10, 5.0), (20, 4.0), (30, 3.5)), 10)
    split = _last_window_loss(lines((10, 5.0), (20, 4.0), (24, 3.0), (30, 23 / 6)), 10)  # a checkpoint at 24
    assert plain == split == 3.5
    assert _last_window_loss(lines((10, 5.0), (17, 4.2)), 10) == 4.2  # a phase that stopped early: its last 7 steps
    assert _last_window_loss([], 10) is None


def test_loss_falls_and_run_dir_is_complete(trained):
    log = [json.loads(line) for line in (trained.path / "metrics.jsonl").read_text().splitlines()]
    pre = [r["loss"] for r in log if r["phase"] == "pretrain" and "loss" in r]
    assert pre[-1] < pre[0] - 1.0, pre
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(log[0])
    for name in ("tokenizer.json", "model.safetensors", "pretrained.safetensors", "config.json",
                 "metrics.jsonl", "eval.json", "manifest.json"):
        assert (trained.path / name).is_file(), name
    assert not (trained.path / "checkpoints").exists() and not (trained.path / "cache").exists()
    m = trained.metrics
    assert m["train"]["steps"] == 30 and m["train"]["final_loss"] == pre[-1]
    for key in ("pretrained", "finetuned"):
        assert len(m[key]["per_file"]) == 2
        assert m[key]["macro_ppl"] > 1 and m[key]["macro_bpb"] > 0
    farm = next(k for k in m["pretrained"]["per_file"] if k.endswith("farm_eval.jsonl"))
    assert m["finetuned"]["per_file"][farm]["ppl"] < m["pretrained"]["per_file"][farm]["ppl"]
    loaded = TrainRun.load(trained.path)
    assert loaded.metrics == m and loaded.config == trained.config
    assert loaded.manifest.stage == "train"


def test_same_seed_same_weights_and_complete_run_is_refused(corpus, tmp_path):
    cfg = TrainConfig(**MICRO, tokens=4 * (4 * 32 * 2) - 100, grad_accum=2)  # a token budget: 4 steps
    a = train([corpus["farm"]], tmp_path / "a", cfg)
    b = train([corpus["farm"]], tmp_path / "b", cfg)
    assert a.metrics["train"]["steps"] == 4 and a.metrics["train"]["tokens"] == 4 * 4 * 32 * 2
    assert (a.path / "model.safetensors").read_bytes() == (b.path / "model.safetensors").read_bytes()
    assert (a.path / "tokenizer.json").read_bytes() == (b.path / "tokenizer.json").read_bytes()
    from impsamp.errors import StageError

    with pytest.raises(StageError, match="already holds a complete"):
        train([corpus["farm"]], tmp_path / "a", cfg)


def test_killed_run_resumes_to_the_same_weights(corpus, tmp_path):
    args = ["-m", "impsamp", "train", "--data", str(corpus["farm"]), "--data", str(corpus["code"]),
            "--finetune", str(corpus["farm"]), "--eval", str(corpus["farm_eval"]), *MICRO_FLAGS,
            "--steps", "10", "--finetune-steps", "8", "--checkpoint-every", "3", "--no-progress"]
    ref = _cli(*args, "--out", str(tmp_path / "ref"))
    slow = {"IMPSAMP_TEST_STEP_SLEEP": "0.4"}
    run = tmp_path / "killed"
    _kill_when(_cli(*args, "--out", str(run), env=slow), run, "ckpt-0-pretrain-*")  # killed in pretraining
    assert not (run / "manifest.json").exists()
    _kill_when(_cli(*args, "--out", str(run), env=slow), run, "ckpt-1-finetune-*")  # killed in fine-tuning
    # how often it logs and checkpoints is not part of the run's key
    _finish(_cli(*args, "--out", str(run), "--log-every", "7", "--checkpoint-every", "4"))
    _finish(ref)
    for name in ("model.safetensors", "pretrained.safetensors"):
        assert (run / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    log = (run / "metrics.jsonl").read_text().splitlines()
    steps = [(r["phase"], r["step"]) for r in map(json.loads, log)]
    assert len(steps) == len(set(steps)), "resumed log holds duplicate steps"
    a, b = (json.loads((p / "eval.json").read_text()) for p in (run, tmp_path / "ref"))
    assert a["pretrained"] == b["pretrained"] and a["finetuned"] == b["finetuned"]


# ----------------------------------------------------------------------------- export and evaluate


def test_export_loads_in_transformers_with_the_same_logits(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    from impsamp_cli.main import cli

    res = CliRunner().invoke(cli, ["export", str(trained.path), str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    tok = trained.load_tokenizer()
    text = "the cat runs to the river. def f(x):"
    ids = tok.encode_batch([text])[0]
    assert hf_tok(text)["input_ids"] == ids
    x = torch.tensor([ids[:32]])
    with torch.no_grad():
        ours = trained.load_model()(x)
        theirs = hf(x).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    said = CliRunner().invoke(cli, ["info", str(tmp_path / "hf")])  # read as a corpus, it failed on config.json
    assert said.exit_code == 0 and f"a transformers export of {trained.path}" in said.output, said.output


def test_export_replaces_only_an_earlier_export(trained, tmp_path):
    pytest.importorskip("transformers")
    from impsamp_cli.main import cli

    def export(out, *extra):
        return CliRunner().invoke(cli, ["export", str(trained.path), str(out), *extra])

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    msg = _one_line_error(export(mine, "--overwrite"))
    assert "not an `impsamp export` output" in msg and (mine / "notes.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(empty).exit_code == 0 and (empty / "impsamp_export.json").is_file()
    assert "already exists" in _one_line_error(export(empty))
    assert export(empty, "--overwrite").exit_code == 0
    assert "a finished impsamp output" in _one_line_error(export(trained.path / "hf"))
    assert not (trained.path / "hf").exists()


def test_export_finishes_what_a_killed_export_left_beside_its_folder(trained, tmp_path, caplog):
    pytest.importorskip("transformers")
    from impsamp.errors import StageError
    from impsamp.training.exporting import export

    out = export(trained.path, tmp_path / "hf")
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    host, dead = socket.gethostname(), 4_194_304 + 7  # above Linux's largest pid: no such process
    out.rename(tmp_path / f".hf.old-{host}-{dead}")  # killed between the renames of `export --overwrite`
    (tmp_path / f".hf.tmp-{host}-{dead + 1}").mkdir()  # and an earlier one killed while writing
    (tmp_path / f".hf.tmp-{host}-{dead + 1}" / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".hf.tmp-otherhost-{dead + 1}").mkdir()  # another machine's (a shared folder): not ours
    with pytest.raises(StageError, match="already exists"):
        export(trained.path, out)  # the earlier export comes back first
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first and "put back the earlier export" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".hf.tmp-otherhost-{dead + 1}", "hf"]
    shutil.copytree(out, tmp_path / f".hf.old-{host}-{dead}")  # killed while deleting the replaced export
    export(trained.path, out, weights="pretrained.safetensors", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".hf.tmp-otherhost-{dead + 1}", "hf"]
    assert json.loads((out / "impsamp_export.json").read_text())["weights"] == "pretrained.safetensors"


def test_evaluate_prints_ppl_and_bpb_per_file_and_macro(trained, corpus):
    from impsamp_cli.main import cli

    files = [str(corpus["farm_eval"]), str(corpus["code_eval"])]
    res = CliRunner().invoke(cli, ["evaluate", str(trained.path), "--eval", files[0], "--eval", files[1]])
    assert res.exit_code == 0, res.output
    m = evaluate(trained.path, files)
    assert m["per_file"][files[0]] == pytest.approx(trained.metrics["finetuned"]["per_file"][files[0]])
    lines = res.output.splitlines()
    assert "ppl" in lines[0] and "bits/byte" in lines[0]
    for f in files:
        row = next(li for li in lines if li.startswith(f))
        assert f"{m['per_file'][f]['ppl']:.2f}" in row and f"{m['per_file'][f]['bpb']:.3f}" in row
    assert lines[-1].startswith("macro average (2 files)")
    assert f"{m['macro_ppl']:.2f}" in lines[-1]
    assert m["macro_ppl"] == pytest.approx(sum(v["ppl"] for v in m["per_file"].values()) / 2)
    assert evaluate(trained.path, files[0])["per_file"] == evaluate(trained.path, [files[0]])["per_file"]  # one path
    # long scoring shows a bar (it ran minutes without a word)
    res = CliRunner().invoke(cli, ["evaluate", str(trained.path), "--eval", files[0], "--progress"])
    assert res.exit_code == 0 and "scoring " + Path(files[0]).name in res.output, res.output
    # one file named twice, another way: one entry (it counted twice in the macro mean)
    other = str(Path(files[0]).parent / "." / Path(files[0]).name)
    again = evaluate(trained.path, [files[0], files[1], other])
    assert list(again["per_file"]) == files and again["macro_ppl"] == pytest.approx(m["macro_ppl"])


def test_shared_tokenizer_is_used_as_given(corpus, tmp_path):
    tok = train_tokenizer([corpus["farm"], corpus["code"]], 280, tmp_path / "tok" / "tokenizer.json")
    with pytest.raises(TokenizerError, match=r"--vocab-size 300: --tokenizer .* fixes the vocabulary \(280 tokens\)"):
        train([corpus["farm"]], tmp_path / "no", TrainConfig(**MICRO, steps=2, tokenizer=str(tok)))  # it sized nothing
    assert not (tmp_path / "no").exists()
    run = train([corpus["farm"]], tmp_path / "run", TrainConfig(**{**MICRO, "vocab_size": 280}, steps=2, tokenizer=str(tok)))
    assert (run.path / "tokenizer.json").read_bytes() == tok.read_bytes()
    assert run.model_config.vocab_size == 320  # 280 padded to a multiple of 64


def test_the_held_out_share_is_the_fraction_asked_for():
    """A validation share of 0.4 held out 0.51 of the documents (one in round(1/0.4) = 2); a share 1/k keeps its
    split of before (one in k by the text's CRC-32), so cached token files and runs stay as they were."""
    import zlib

    from impsamp.training.data import held_out, split_key

    texts = [f"document {i} about wheat".encode() for i in range(20_000)]
    for share in (0.05, 0.3, 0.35, 0.4, 0.49):
        assert abs(sum(map(held_out(share), texts)) / len(texts) - share) < 0.01, share
    assert [held_out(0.1)(t) for t in texts] == [zlib.crc32(t) % 10 == 0 for t in texts]
    assert not any(held_out(0.0)(t) for t in texts[:100])
    assert split_key(0.1) == {"val_fraction": 0.1} and split_key(0.4)["split"] == "share"


def test_a_tokenizer_that_cuts_or_pads_is_read_whole(corpus, tmp_path):
    """A user's tokenizer.json made for an encoder cuts and pads every text to its window: the LM trained on
    padding and scored a cut document's bytes by its first tokens (bits per byte 2x too low)."""
    import tokenizers

    from impsamp.training.tokenizer import load_tokenizer

    path = train_tokenizer([corpus["farm"]], 280, tmp_path / "tok" / "tokenizer.json")
    text = " ".join(["the farm grows wheat and barley"] * 20)
    whole = load_tokenizer(path).encode_batch([text, "wheat"])
    cutting = tokenizers.Tokenizer.from_file(str(path))
    cutting.enable_truncation(8)
    cutting.enable_padding(length=8)
    cutting.save(str(tmp_path / "cut.json"))
    assert [len(e.ids) for e in cutting.encode_batch([text, "wheat"])] == [8, 8]
    assert load_tokenizer(tmp_path / "cut.json").encode_batch([text, "wheat"]) == whole
    assert len(whole[0]) > 20 and len(whole[1]) < 8


def test_a_new_model_family_is_one_registration(corpus, tmp_path, monkeypatch):
    """The loop, checkpoints, evaluation and TrainRun use only the family contract: a registered toy
    family (the dense model with its own parameter groups and no transformers export) trains, resumes
    from its weights and evaluates; `export` refuses it in one line."""
    from impsamp.errors import ConfigError
    from impsamp.training import families
    from impsamp.training.model import GPT

    groups_asked = []

    class Toy(GPT):
        def param_groups(self, weight_decay):
            groups_asked.append(weight_decay)
            return [{"params": list(self.parameters()), "weight_decay": 0.0}]

    monkeypatch.setitem(families.FAMILIES, "toy", families.ModelFamily("toy", Toy, "a test family"))
    run = train([corpus["farm"]], tmp_path / "toy", TrainConfig(**MICRO, steps=3, arch="toy"), eval=[corpus["farm"]])
    assert groups_asked == [0.1] and run.config.arch == "toy"
    loaded = TrainRun.load(run.path)
    assert isinstance(loaded.load_model(), Toy)
    assert evaluate(run.path, [corpus["farm"]])["macro_ppl"] == pytest.approx(run.metrics["pretrained"]["macro_ppl"])
    from impsamp_cli.main import cli

    msg = _one_line_error(CliRunner().invoke(cli, ["export", str(run.path), str(tmp_path / "hf")]))
    assert "'toy' model" in msg and not (tmp_path / "hf").exists()
    with pytest.raises(ConfigError, match="--arch 'nope' is unknown; model families: .*dense"):
        TrainConfig(**MICRO, steps=1, arch="nope")


# ----------------------------------------------------------------------------- bad input


def _one_line_error(res) -> str:
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output
    lines = [li for li in res.output.splitlines() if li.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


def _train_cli(out: Path, *extra: str):
    from impsamp_cli.main import cli

    return CliRunner().invoke(cli, ["train", "--out", str(out), *MICRO_FLAGS, "--steps", "4", *extra])


def test_empty_data_is_one_line_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert "empty" in _one_line_error(_train_cli(tmp_path / "r1", "--data", str(tmp_path / "empty.jsonl")))
    _write_jsonl(tmp_path / "blank.jsonl", ["   ", "\n"])
    msg = _one_line_error(_train_cli(tmp_path / "r2", "--data", str(tmp_path / "blank.jsonl")))
    assert "no document with text" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_one_line_error(corpus, tmp_path):
    msg = _one_line_error(_train_cli(tmp_path / "r", "--data", str(corpus["farm"]), "--device", "cuda"))
    assert "no CUDA GPU" in msg and "--device cpu" in msg


def test_model_that_does_not_fit_says_what_fits(corpus, tmp_path, monkeypatch):
    from impsamp.training import runtime

    monkeypatch.setattr(runtime, "free_memory", lambda device: 3 << 30)
    from impsamp_cli.main import cli

    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "r"), "--data", str(corpus["farm"]),
                                   "--preset", "slm-126m", "--device", "cpu"])
    msg = _one_line_error(res)
    assert "GiB" in msg and "--batch-size" in msg
    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "r"), "--data", str(corpus["farm"]),
                                   "--preset", "llm-771m", "--device", "cpu"])
    assert "presets that fit: tiny" in _one_line_error(res)


def test_other_tokenizer_on_resume_is_refused(corpus, tmp_path, monkeypatch):
    from impsamp.training import loop

    tok_a = train_tokenizer([corpus["farm"]], 300, tmp_path / "a" / "tokenizer.json")
    tok_b = train_tokenizer([corpus["code"]], 300, tmp_path / "b" / "tokenizer.json")

    def interrupt(phase, step):
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_step_hook", interrupt)
    out = tmp_path / "run"
    res = _train_cli(out, "--data", str(corpus["farm"]), "--tokenizer", str(tok_a), "--checkpoint-every", "1")
    assert res.exit_code == 130 and list((out / "checkpoints").glob("ckpt-*"))
    size_b = str(load_tokenizer(tok_b).vocab_size)  # (the flags' --vocab-size 300 would be refused: it sizes nothing)
    msg = _one_line_error(_train_cli(out, "--data", str(corpus["farm"]), "--tokenizer", str(tok_b),
                                     "--checkpoint-every", "1", "--vocab-size", size_b))
    assert "does not match the tokenizer of the interrupted run" in msg
    msg = _one_line_error(_train_cli(out, "--data", str(corpus["farm"]), "--checkpoint-every", "1"))
    assert "used --tokenizer" in msg
    # the same tokenizer named another way (relative, from another folder) resumes: it was "other settings"
    monkeypatch.setattr(loop, "_step_hook", lambda phase, step: None)
    monkeypatch.chdir(tmp_path / "b")
    res = _train_cli(out, "--data", str(corpus["farm"]), "--tokenizer", "../a/./tokenizer.json", "--checkpoint-every", "1")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["train"]["tokenizer"] == str(tok_a.resolve())


def test_auto_dtype_is_bfloat16_where_the_cpu_multiplies_it_in_hardware(monkeypatch):
    import impsamp.hardware as hw
    from impsamp.training.runtime import resolve_dtype

    cpu = torch.device("cpu")
    for flags, want in (({"avx512f", "avx512_bf16"}, torch.bfloat16), ({"amx_bf16", "amx_tile"}, torch.bfloat16),
                        ({"avx2", "avx512f"}, torch.float32), (set(), torch.float32)):
        monkeypatch.setattr(hw, "_cpu_flags", lambda f=flags: f)
        assert resolve_dtype("auto", cpu) == want, flags
        assert hw.cpu_has_amx_bf16() == ("amx_bf16" in flags)  # the embedder's choice stays AMX-only
    assert resolve_dtype("float32", cpu) == torch.float32 and resolve_dtype("bfloat16", cpu) == torch.bfloat16
