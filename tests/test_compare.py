"""`impsamp compare` on user-supplied files: every method, a report, resumable (tiny LM, few steps)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from impsamp_cli.main import cli

from impsamp.comparison import CompareConfig, Report
from impsamp.errors import ConfigError

pytest.importorskip("torch")

WORDS = {
    "farm": "tractor harvest wheat barley soil rain cattle barn field seed plough",
    "code": "function variable compiler loop return class import module error debug",
}


def _write(path, topic_of, n, rng):
    rows = []
    for i in range(n):
        topic = topic_of(i)
        words = WORDS[topic].split()
        rows.append({"id": f"{path.stem}-{i}", "domain": topic,
                     "text": " ".join(rng.choice(words) for _ in range(60))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _small_inputs(tmp_path, seed: int):
    """A 200-document two-topic generic corpus, a 'code' target and eval, and c.toml: a one-layer LM."""
    rng = np.random.default_rng(seed)
    generic = _write(tmp_path / "generic.jsonl", lambda i: "farm" if i % 2 else "code", 200, rng)
    target = _write(tmp_path / "target.jsonl", lambda i: "code", 30, rng)
    evals = _write(tmp_path / "eval.jsonl", lambda i: "code", 10, rng)
    (tmp_path / "c.toml").write_text('[compare]\nmodel = "hashing:64"\nvocab_size = 300\nn_layer = 1\n'
                                  'n_embd = 32\nn_head = 2\nblock_size = 32\nbatch_size = 4\n')
    return generic, target, evals


def test_compare_runs_every_method_and_writes_a_report(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    generic = _write(tmp_path / "generic.jsonl", lambda i: "farm" if i % 2 else "code", 300, rng)
    target = _write(tmp_path / "target.jsonl", lambda i: "code", 40, rng)
    evals = _write(tmp_path / "eval.jsonl", lambda i: "code", 20, rng)
    out = tmp_path / "cmp"
    monkeypatch.chdir(tmp_path)  # a relative --out, as the demo's default is (the report's links broke on it)
    args = ["compare", "--generic", generic, "--target", target, "--eval", evals, "--out", "cmp",
            "--methods", "uniform,importance,importance-uniform,ngram,classifier", "--tokens", 3000, "--k", 4, "--steps", 3,
            "--finetune-steps", 2, "--no-progress", "--config", tmp_path / "c.toml",
            "--within-temperature", 0.1, "--within-repeats", "weighted", "--max-repeat", 3, "--dtype", "float32"]
    (tmp_path / "c.toml").write_text('[compare]\nmodel = "hashing:64"\nbackend = "torch"\nvocab_size = 300\n'
                                  'n_layer = 1\nn_embd = 32\nn_head = 2\nblock_size = 32\nbatch_size = 4\n')
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert "| importance |" in r.output and "| ngram |" in r.output
    report = Report.load(out)
    methods = report.results["methods"]
    assert set(methods) == {"uniform", "importance", "importance-uniform", "ngram", "classifier"}
    for m, e in methods.items():
        assert np.isfinite(e["metrics"]["pretrained"]["macro_ppl"]), m
        assert np.isfinite(e["metrics"]["finetuned"]["macro_ppl"]), m
    assert report.results["target_domain"] == "code"
    assert {k: report.results["embedding"][k] for k in ("model", "backend", "max_tokens")} == {
        "model": "hashing:64", "backend": "torch", "max_tokens": 128}  # what embedded the pool, as it ran
    for m in ("importance", "importance-uniform"):
        assert methods[m]["target_domain_share"] > methods["uniform"]["target_domain_share"], m
    imp, paper = (json.loads((out / "selections" / m / "manifest.json").read_text())["config"]
                  for m in ("importance", "importance-uniform"))
    # importance: the default `--within auto`, ngram-classifier for a corpus target, with the flags' settings
    assert (imp["within"], imp["within_temperature"], imp["within_repeats"], imp["max_repeat"]) == (
        "ngram-classifier", 0.1, "weighted", 3)
    assert (paper["within"], paper["max_repeat"], paper["within_temperature"]) == ("uniform", 3, 0.05)
    trained = json.loads((out / "runs" / "importance" / "manifest.json").read_text())["config"]
    assert trained["dtype"] == "float32"  # --dtype reaches every run
    assert (out / "report.md").read_text().startswith("# impsamp compare")
    assert 'href="selections/importance/explorer.html"' in (out / "report.html").read_text()
    # a GitHub-style table is one only where the header has the separator's cells (a `||` in it split one in two)
    md = (out / "report.md").read_text().splitlines()
    for i in [i for i, li in enumerate(md) if re.fullmatch(r"\|(-+\|)+", li.strip())]:
        assert md[i - 1].count("|") == md[i].count("|") == md[i + 1].count("|"), md[i - 1]
    # a second run reuses every stage and refuses to clobber without --overwrite
    r2 = CliRunner().invoke(cli, [str(a) for a in args])
    assert r2.exit_code == 1 and "--overwrite" in r2.output


def test_train_seed_trains_the_same_selections_again(tmp_path):
    generic, target, evals = _small_inputs(tmp_path, seed=2)

    def run(out, *extra):
        args = ["compare", "--generic", generic, "--target", target, "--eval", evals, "--out", out, "--methods",
                "importance", "--tokens", 2000, "--k", 4, "--steps", 3, "--finetune-steps", 2, "--no-progress",
                "--dtype", "float32", "--config", tmp_path / "c.toml", *extra]
        r = CliRunner().invoke(cli, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return Report.load(out).results["methods"]["importance"]

    plain, same, other = run(tmp_path / "a"), run(tmp_path / "b", "--train-seed", 0), run(tmp_path / "c", "--train-seed", 5)
    data = [{o["path"]: o["sha256"] for o in json.loads((tmp_path / d / "selections" / "importance" / "manifest.json")
                                                         .read_text())["outputs"] if o["path"].startswith("data-")}
            for d in "abc"]
    assert data[0] == data[1] == data[2] and data[0]  # the selection follows --seed only
    seeds = [json.loads((tmp_path / d / "runs" / "importance" / "manifest.json").read_text())["config"]["seed"]
             for d in "abc"]
    assert seeds == [0, 0, 5]
    ppl = [m["metrics"]["pretrained"]["macro_ppl"] for m in (plain, same, other)]
    assert ppl[0] == ppl[1] != ppl[2]

    # --lm-seeds 2 from seed 4: LMs under seeds 4 and 5, the second the same run as --train-seed 5's
    both = run(tmp_path / "d", "--train-seed", 4, "--lm-seeds", 2)
    assert both["lm_seeds"]["seeds"] == [4, 5] and (tmp_path / "d" / "runs" / "importance-lm5").is_dir()
    four, five = both["lm_seeds"]["pretrained_ppl"]
    assert five == other["metrics"]["pretrained"]["macro_ppl"] and four != five
    assert both["metrics"]["pretrained"]["macro_ppl"] == pytest.approx((four + five) / 2)
    assert both["lm_seeds"]["finetuned_ppl"][1] == other["metrics"]["finetuned"]["macro_ppl"]
    report = (tmp_path / "d" / "report.md").read_text()
    assert "LM seeds 4, 5" in report and "trained under 2 LM seeds (4, 5)" in report
    assert f"{both['metrics']['finetuned']['macro_ppl']:.2f} ± " in report


def test_compare_config_checks_methods_and_seeds():
    with pytest.raises(ConfigError, match="unknown"):
        CompareConfig(methods=("nope",))
    with pytest.raises(ConfigError, match="--methods: uniform given twice"):
        CompareConfig(methods="uniform,importance,uniform")
    assert isinstance(hash(CompareConfig(methods=["uniform", "importance"])), int)  # a list made a tuple: hashable
    assert CompareConfig(models=["dense"]).models == ("dense",)
    for name in ("seed", "train_seed"):
        for bad in (-1, 2**31):
            with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be an integer from 0 to "
                                                  f"2147483647, got {bad}"):
                CompareConfig(**{name: bad})
    with pytest.raises(ConfigError, match="--lm-seeds must be >= 1, got 0"):
        CompareConfig(lm_seeds=0)
    with pytest.raises(ConfigError, match="--k must be >= 2, got 1"):
        CompareConfig(k=1)
    with pytest.raises(ConfigError, match="no large preset for --preset mini"):  # before any work, not after
        CompareConfig(preset="mini", models=("dense", "distill"))
    assert CompareConfig(preset="mini", models=("dense", "experts")).preset == "mini"
    distill = ("dense", "distill")
    for bad in (2.0, -0.1, float("nan")):  # at once: not after minutes of training
        with pytest.raises(ConfigError, match="--alpha must be in"):
            CompareConfig(distill_alpha=bad, models=distill)
    with pytest.raises(ConfigError, match="distill_temperature must be > 0"):
        CompareConfig(distill_temperature=0.0, models=distill)
    with pytest.raises(ConfigError, match="--groups 9 is more than the 8 clusters"):
        CompareConfig(models=("dense", "experts"), groups=9, k=8)
    # a model's settings without the model did nothing: refused, as --within without importance is
    for kw, message in [({"groups": 9, "k": 8}, "--groups set"), ({"expert_select": "all"}, "--select set"),
                        ({"distill_alpha": 0.3}, "--alpha set"), ({"large_steps": 5}, "--large-steps set")]:
        with pytest.raises(ConfigError, match=f"{message}.*add it to --models"):
            CompareConfig(**kw)
    # --large-steps 0 was taken as the default, -1 failed after the dense runs had trained
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=f"--large-steps must be > 0, got {bad}"):
            CompareConfig(large_steps=bad, models=distill)
    # the LM's shape (from the config file: compare has no such flags) was checked after every selection
    with pytest.raises(ConfigError, match=r"^n_embd 250 must be a multiple of n_head 4 .*\(the \[compare\] table"):
        CompareConfig(n_embd=250)
    with pytest.raises(ConfigError, match=r"^vocab_size must be >= 260 .*got 100 \(the \[compare\] table"):
        CompareConfig(vocab_size=100)  # was refused after every selection, when the tokenizer was trained


def test_every_dense_run_gets_the_compares_lm_settings():
    from dataclasses import fields

    from impsamp.comparison import LM_SETTINGS
    from impsamp.training import TrainConfig

    shared = {f.name for f in fields(CompareConfig)} & {f.name for f in fields(TrainConfig)}
    # the names both have that mean something else in a compare: the selections' budget, the tokenizer it trains,
    # the seed (else --train-seed), the projected networks' basis
    assert shared - set(LM_SETTINGS) == {"tokens", "vocab_size", "seed", "basis"} and set(LM_SETTINGS) <= shared
    cfg = CompareConfig(preset="mini", steps=7, finetune_steps=3, dtype="float32", n_layer=2, n_embd=64, n_head=2,
                        block_size=32, batch_size=4, text_field="body", seed=5)
    tcfg = cfg.train_config("tok.json")
    assert {name: getattr(tcfg, name) for name in LM_SETTINGS} == {name: getattr(cfg, name) for name in LM_SETTINGS}
    assert (tcfg.tokenizer, tcfg.seed) == ("tok.json", 5)
    assert CompareConfig(seed=5, train_seed=9).train_config().seed == 9


def test_lm_seed_pairs_give_mean_standard_error_and_wins():
    from impsamp.training_noise import mean_metrics, paired, per_seed, report_lines

    def metrics(pre, fin):
        return {"pretrained": {"macro_ppl": pre, "macro_bpb": pre / 100, "per_file": {"e": {"ppl": pre, "bpb": 1.0}}},
                "finetuned": {"macro_ppl": fin, "macro_bpb": fin / 100}, "train": {"steps": 3}}

    base = [metrics(300, 200), metrics(320, 220), metrics(310, 210)]
    better = [metrics(290, 190), metrics(300, 215), metrics(305, 200)]
    same = [metrics(300, 201), metrics(320, 219), metrics(310, 210)]
    mean = mean_metrics(base)
    assert mean["pretrained"]["macro_ppl"] == 310 and mean["finetuned"]["macro_bpb"] == pytest.approx(2.1)
    assert mean["pretrained"]["per_file"]["e"]["ppl"] == 310 and mean["train"] == {"steps": 3}
    assert base[0]["pretrained"]["macro_ppl"] == 300  # the runs' own metrics are left alone
    methods = {m: {"lm_seeds": per_seed(r, [0, 1, 2])} for m, r in (("a", base), ("b", better), ("c", same))}
    noise = paired(methods)
    assert noise["baseline"] == "a" and noise["measure"] == "finetuned_ppl" and set(noise["paired"]) == {"b", "c"}
    b = noise["paired"]["b"]  # differences -10, -5, -10
    assert (b["lower"], b["n"]) == (3, 3) and b["mean"] == pytest.approx(-25 / 3)
    assert b["se"] == pytest.approx(np.std([-10, -5, -10], ddof=1) / np.sqrt(3))
    assert noise["paired"]["c"]["lower"] == 1
    lines = "\n".join(report_lines({"lm_seeds": noise}))
    assert "- b: -8.33 (standard error 1.67), lower in 3 of 3 seeds\n" in lines
    assert "- c: +0.00 (standard error 0.58), lower in 1 of 3 seeds: within the training noise" in lines
    assert report_lines({}) == [] and paired({"a": {}}) is None


def test_a_killed_compare_resumes_reusing_its_finished_stages(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    generic, target, evals = _small_inputs(tmp_path, seed=1)

    def run(out, *extra, **env):
        args = ["compare", "--generic", generic, "--target", target, "--eval", evals, "--out", out,
                "--methods", "uniform,importance", "--tokens", 2000, "--k", 4, "--steps", 4,
                "--finetune-steps", 2, "--no-progress", "--config", tmp_path / "c.toml", *extra]
        return subprocess.run([sys.executable, "-m", "impsamp", *map(str, args)], capture_output=True,
                              text=True, env={**os.environ, **env}, timeout=300)

    ref = run(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    # an --overwrite stopped by bad input (a budget the pool cannot hold) puts the finished report back; a fresh run
    # stopped so leaves nothing, and the same command runs once the input is fixed (it left a run of "other settings")
    report = (tmp_path / "ref" / "results.json").read_bytes()
    bad = run(tmp_path / "ref", "--tokens", 10**8, "--overwrite")
    assert bad.returncode == 1 and "put back" in bad.stderr, bad.stderr
    assert (tmp_path / "ref" / "results.json").read_bytes() == report and (tmp_path / "ref" / "manifest.json").exists()
    assert not (tmp_path / "ref" / "_replaced").exists()
    bad = run(tmp_path / "fresh", "--tokens", 10**8)
    assert bad.returncode == 1 and not (tmp_path / "fresh").exists(), bad.stderr
    card = (tmp_path / "ref" / "selections" / "importance" / "README.md").read_text()
    assert "impsamp compare --generic" in card and "# its importance selection" in card  # a command one can run
    # a finished LM run is reused only on the same data, fine-tuning and evaluation text
    from impsamp.training import TrainRun
    from impsamp.training.provenance import finished_run

    lm = TrainRun.load(tmp_path / "ref" / "runs" / "uniform")
    data = lm.manifest.inputs["data"]["paths"]
    edited = tmp_path / "eval-edited.jsonl"
    edited.write_text(evals.read_text().replace("loop", "LOOP"))
    assert finished_run(lm.path, lm.config, data, [str(target)], [str(evals)]) is not None
    assert finished_run(lm.path, lm.config, data, [str(target)], [str(edited)]) is None
    assert finished_run(lm.path, lm.config, data, [str(edited)], [str(evals)]) is None
    out = tmp_path / "cmp"
    # killed in the first LM run, after the embeddings, clusters and both selections are done
    killed = run(out, IMPSAMP_TEST_KILL_AT="pretrain:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "manifest.json").exists()
    original = evals.read_bytes()  # an evaluation file edited meanwhile: the run is refused, not resumed
    evals.write_text(original.decode().replace("loop", "LOOP"))
    refused = run(out)
    assert refused.returncode == 1 and "other settings or inputs" in refused.stderr, refused.stderr
    evals.write_bytes(original)
    done = {p: (out / p / "manifest.json").stat().st_mtime_ns
            for p in ("embeddings", "clusters", "selections/uniform", "selections/importance")}
    again = run(out, "--targets-expected", 7)  # the budgets only choose: resumed with another (it was refused)
    assert again.returncode == 0, again.stderr
    assert {p: (out / p / "manifest.json").stat().st_mtime_ns for p in done} == done  # reused, not redone
    a, b = (json.loads((d / "results.json").read_text()) for d in (out, tmp_path / "ref"))
    assert a["config"].pop("targets_expected") == 7 and b["config"].pop("targets_expected") is None
    for res in (a, b):
        res.pop("plan", None)
    for res in (a, b):  # wall-clock speed is the only thing allowed to differ
        for e in res["methods"].values():
            for phase in ("train", "train_finetune"):
                e["metrics"][phase].pop("tokens_per_s")
    assert a == b


def test_each_installation_keeps_its_own_demo_embedding_cache(tmp_path, monkeypatch):
    # Embeddings record the corpus path they were made from, and selections read the text there: a
    # cache made from another install's pool (maybe deleted since) must not be picked up.
    from impsamp.demonstration import embeddings_dir as demo_embeddings_dir

    monkeypatch.delenv("IMPSAMP_CACHE_DIR", raising=False)
    monkeypatch.setenv("IMPSAMP_CACHE", str(tmp_path / "cache"))
    one, two = tmp_path / "a" / "pool.parquet", tmp_path / "b" / "pool.parquet"
    assert demo_embeddings_dir(one, "torch", 128, "0.2.0") != demo_embeddings_dir(two, "torch", 128, "0.2.0")
    same = demo_embeddings_dir(tmp_path / "a" / ".." / "a" / "pool.parquet", "torch", 128, "0.2.0")
    assert same == demo_embeddings_dir(one, "torch", 128, "0.2.0")
    assert same.parent == tmp_path / "cache" / "demo-0.2.0"
    assert demo_embeddings_dir(one, "onnx", 128, "0.2.0") != same != demo_embeddings_dir(one, "torch", 256, "0.2.0")


def test_the_demo_reuses_its_own_report_and_replaces_no_other_output(tmp_path, monkeypatch):
    """A second demo of the same settings prints the first's report (no training); another target replaces it
    without --overwrite; an --out that holds another stage's output is refused and left as it was. The
    embedding and the compare are stand-ins here: what is tested is the demo's choice."""
    from dataclasses import asdict

    import impsamp.demonstration as demonstration

    from impsamp import __version__
    from impsamp.datasets import demo_corpus
    from impsamp.io import open_corpus
    from impsamp.manifest import StageRun

    corpus = demo_corpus()
    domain_of = {str(corpus.sample(d)): d for d in corpus.domains}
    compares = []

    def fake_compare(generic, target, evals, out, cfg, *, embeddings, overwrite, progress, command):
        compares.append(overwrite)
        run = StageRun(out, "compare", config=asdict(cfg), overwrite=overwrite,
                       inputs={"generic": {"fingerprint": open_corpus(generic).fingerprint()}}).begin()
        results = {"config": asdict(cfg), "impsamp_version": __version__, "target_domain": domain_of[str(target[0])]}
        for name, text in (("results.json", json.dumps(results)), ("report.html", "<html></html>")):
            (out / name).write_text(text)
        run.finish(stats={}, extra_files={n: out / n for n in ("results.json", "report.html")})
        return Report.load(out)

    monkeypatch.setattr(demonstration, "cached_embeddings", lambda *a, **kw: tmp_path / "emb")
    monkeypatch.setattr(demonstration, "compare", fake_compare)
    monkeypatch.setattr(Report, "table", lambda self: "(table)")
    out = tmp_path / "demo"
    for _ in range(2):
        r = CliRunner().invoke(cli, ["demo", "--out", str(out), "--no-progress"])
        assert r.exit_code == 0, r.output
    assert len(compares) == 1  # the second demo reused the first's report
    r = CliRunner().invoke(cli, ["demo", "--out", str(out), "--target", "shakespeare", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert compares == [True, True]  # its own report, for another target: replaced
    import impsamp  # the same from Python: `impsamp.demo` with the CLI's defaults reuses the report

    assert impsamp.demo("shakespeare", out).results["target_domain"] == "shakespeare" and compares == [True, True]
    assert impsamp.demo_config(all_methods=True, steps=5).methods == demonstration.METHODS
    # a config given as the CompareConfig or dict it is (k left to the default) finds its report too
    settings = {**demonstration.DEMO_DEFAULTS, "k": None}
    for config in (CompareConfig(**settings), settings):
        assert impsamp.demo("shakespeare", out, config=config) and compares == [True, True]
    with pytest.raises(ConfigError, match="demo_config: unknown key.s. .'bogus'."):
        impsamp.demo_config(bogus=1)
    with pytest.raises(ConfigError, match="all_methods=True or methods=..., not both"):
        impsamp.demo_config(all_methods=True, methods=("uniform",))
    # a report of 0.7.13 or before, which took the pool's fingerprint from sampled Parquet digests: replaced too

    from impsamp.io.discovery import file_digest

    pool = open_corpus(corpus.pool)
    legacy = replace(pool, files=[replace(f, digest=file_digest(Path(f.path), f.bytes)) for f in pool.files])
    assert legacy.fingerprint() != pool.fingerprint()
    old = tmp_path / "old-demo"
    StageRun(old, "compare", config={}, inputs={"generic": {"fingerprint": legacy.fingerprint()}},
             version="0.7.13").begin().finish(stats={})
    r = CliRunner().invoke(cli, ["demo", "--out", str(old), "--no-progress"])
    assert r.exit_code == 0 and compares == [True, True, True], r.output
    other = tmp_path / "clusters"
    StageRun(other, "cluster", config={}, inputs={}).begin().finish(stats={})
    before = sorted(p.name for p in other.iterdir())
    r = CliRunner().invoke(cli, ["demo", "--out", str(other), "--no-progress"])
    assert r.exit_code == 1 and "not a demo report" in r.output and len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in other.iterdir()) == before and len(compares) == 3


def test_auto_backend_is_onnx_int8_without_amx_and_torch_with_it(monkeypatch):
    import impsamp.hardware
    from impsamp.embedding.loading import backend_label, embed_backend

    monkeypatch.setattr(impsamp.hardware, "cpu_has_amx_bf16", lambda: True)
    assert embed_backend("auto") == ("torch", None)
    monkeypatch.setattr(impsamp.hardware, "cpu_has_amx_bf16", lambda: False)
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert embed_backend("auto") == ("onnx", "int8") and backend_label(embed_backend("auto")) == "onnx-int8"
    assert embed_backend("onnx") == ("onnx", None) and embed_backend("torch") == ("torch", None)


def test_demo_help_gives_its_own_model_and_steps():
    from impsamp.demonstration import DEMO_DEFAULTS

    demo = CliRunner().invoke(cli, ["demo", "--help"]).output
    compare = CliRunner().invoke(cli, ["compare", "--help"]).output
    assert f"[default: {DEMO_DEFAULTS['preset']}]" in demo and "[default: tiny]" in compare
    assert f"[default: {DEMO_DEFAULTS['steps']}]" in demo and "[default: 100]" in compare


def test_importance_weighs_documents_and_importance_uniform_is_the_papers():
    from impsamp.comparison import CompareConfig

    cfg = CompareConfig(methods=("importance", "importance-uniform"), within_temperature=0.2)
    imp, paper = cfg.selection_config("importance"), cfg.selection_config("importance-uniform")
    assert (imp.method, imp.within, imp.within_temperature) == ("importance", "auto", 0.2)
    assert imp.resolved(target_has_vectors=True, target_has_text=True).within == "ngram-classifier"
    assert imp.resolved(target_has_vectors=True).within == "knn"  # a target's embed output: vectors, no text
    with pytest.raises(ConfigError, match="--within-temperature shape.* a saved histogram has none"):
        imp.resolved(target_has_vectors=False)  # a saved histogram: no documents to weigh, refused, not dropped
    assert replace(imp, within_temperature=0.05).resolved(target_has_vectors=False).within == "uniform"
    assert (paper.method, paper.within) == ("importance", "uniform")
    assert cfg.selection_config("ngram").within == "auto" and cfg.selection_config("ngram").resolved(True, True) \
        .within == "uniform"  # the other methods never weigh inside clusters
    hybrid = CompareConfig(within="knn+ngram")
    assert (hybrid.selection_config("importance").within, hybrid.selection_config("importance-uniform").within) \
        == ("knn+ngram", "uniform")  # --within is importance's; importance-uniform stays the paper's
    top = CompareConfig(within_top=1.5)
    assert (top.selection_config("importance").within_top, top.selection_config("importance-uniform").within_top) \
        == (1.5, None)  # importance's option, never the paper's variant's
    with pytest.raises(ConfigError, match="--within-top must be >= 1"):
        CompareConfig(within_top=0.9)
    with pytest.raises(ConfigError, match="--within must be one of"):
        CompareConfig(within="nearest")
    with pytest.raises(ConfigError, match="--dtype must be one of"):
        CompareConfig(dtype="float16")
    crisp = CompareConfig(methods=("importance",), scheme="crisp").selection_config("importance")
    assert crisp.resolved(True, True).within == "uniform"  # weights inside clusters need match's quotas


def test_compare_refuses_stage_outputs_of_another_corpus_and_keeps_its_inputs(tmp_path):
    from impsamp.clustering import ClusterConfig, cluster
    from impsamp.embedding import EmbedConfig, embed

    generic, target, evals = _small_inputs(tmp_path, seed=0)
    emb = embed(target, tmp_path / "emb", EmbedConfig(model="hashing:64"))  # the target's, not the generic's
    r = CliRunner().invoke(cli, ["compare", "--generic", str(generic), "--target", str(target), "--eval", str(evals),
                                 "--out", str(tmp_path / "cmp"), "--embeddings", str(emb.path),
                                 "--config", str(tmp_path / "c.toml")])
    assert r.exit_code == 1 and "--embeddings" in r.output and "another corpus than --generic" in r.output, r.output
    assert not (tmp_path / "cmp").exists()  # refused before anything is written
    clu = cluster(emb, tmp_path / "clu", ClusterConfig(k=2))  # --clusters alone: their own embeddings are checked
    r = CliRunner().invoke(cli, ["compare", "--generic", str(generic), "--target", str(target), "--eval", str(evals),
                                 "--out", str(tmp_path / "cmp"), "--clusters", str(clu.path),
                                 "--config", str(tmp_path / "c.toml")])
    assert r.exit_code == 1 and "their embeddings" in r.output and "another corpus" in r.output, r.output
    assert not (tmp_path / "cmp").exists()
    # --overwrite never deletes a folder that holds one of the compare's inputs
    (tmp_path / "cmp2").mkdir()
    inner = _write(tmp_path / "cmp2" / "generic.jsonl", lambda i: "farm" if i % 2 else "code", 200,
                   np.random.default_rng(0))
    (tmp_path / "cmp2" / "_run.json").write_text(json.dumps({"stage": "compare", "key": "another run"}))
    r = CliRunner().invoke(cli, ["compare", "--generic", str(inner), "--target", str(target), "--eval", str(evals),
                                 "--out", str(tmp_path / "cmp2"), "--overwrite", "--config", str(tmp_path / "c.toml")])
    assert r.exit_code == 1 and "is also an input of this run" in r.output, r.output
    assert inner.exists()


def test_importance_settings_without_importance_and_a_k_that_is_not_the_clusters_are_refused(tmp_path):
    from impsamp.clustering import ClusterConfig, cluster
    from impsamp.embedding import EmbedConfig, embed

    with pytest.raises(ConfigError, match="--within, --within-top set.s. how `importance` draws"):
        CompareConfig(methods=("uniform", "ngram"), within="knn", within_top=1.25)
    for drawn, named in (({"max_repeat": 2}, "--max-repeat"), ({"scheme": "crisp"}, r"scheme \(the \[compare\] table")):
        with pytest.raises(ConfigError, match=f"^{named}.* set.s. how importance sampling draws; add importance"):
            CompareConfig(methods=("uniform", "ngram"), **drawn)  # were dropped without a word
    assert CompareConfig(methods=("uniform", "importance-uniform"), max_repeat=2).selection_config(
        "importance-uniform").max_repeat == 2
    generic, target, evals = _small_inputs(tmp_path, seed=0)
    clu = cluster(embed(generic, tmp_path / "emb", EmbedConfig(model="hashing:64")), tmp_path / "clu",
                  ClusterConfig(k=3))
    r = CliRunner().invoke(cli, ["compare", "--generic", str(generic), "--target", str(target), "--eval", str(evals),
                                 "--out", str(tmp_path / "cmp"), "--clusters", str(clu.path), "--k", "4"])
    assert r.exit_code == 1 and "has k = 3: drop --k 4" in r.output, r.output
    assert not (tmp_path / "cmp").exists()
    from impsamp.comparison import compare, resolve_k  # the Python API: the same refusal, for any k asked for
    for k in (128, 64):  # the default's value too, asked for (a config file's `k = 64`, say)
        with pytest.raises(ConfigError, match=f"has k = 3: drop --k {k}"):
            compare(generic, target, [evals], tmp_path / "cmp", CompareConfig(k=k), clusters=clu.path)
    toml = tmp_path / "c.toml"
    toml.write_text("[compare]\nk = 64\n")
    r = CliRunner().invoke(cli, ["compare", "--generic", str(generic), "--target", str(target), "--eval", str(evals),
                                 "--out", str(tmp_path / "cmp"), "--clusters", str(clu.path), "--config", str(toml)])
    assert r.exit_code == 1 and "has k = 3: drop --k 64" in r.output, r.output
    assert not (tmp_path / "cmp").exists()
    assert resolve_k(CompareConfig(), clu.path).k == 3 and resolve_k(CompareConfig()).k == 64


@pytest.mark.parametrize("which, content, message", [
    ("eval", '{"text": "fine"}\n{"text": oops}\n', "eval.jsonl line 2: malformed JSON"),
    ("target", '{"text": "  "}\n', "--target"),
])
def test_a_bad_target_or_eval_file_is_refused_before_the_generic_corpus_is_embedded(tmp_path, which, content,
                                                                                      message):
    generic, target, evals = _small_inputs(tmp_path, seed=0)
    {"eval": evals, "target": target}[which].write_text(content)
    r = CliRunner().invoke(cli, ["compare", "--generic", str(generic), "--target", str(target), "--eval",
                                 str(evals), "--out", str(tmp_path / "cmp"), "--config", str(tmp_path / "c.toml")])
    assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "cmp").exists()


def test_a_weighted_target_and_embeddings_of_another_field_are_refused_in_one_line(tmp_path):
    from impsamp.embedding import EmbedConfig, embed
    from impsamp.io import open_corpus

    generic, target, evals = _small_inputs(tmp_path, seed=0)
    args = ["compare", "--generic", str(generic), "--eval", str(evals), "--out", str(tmp_path / "cmp"),
            "--config", str(tmp_path / "c.toml")]
    r = CliRunner().invoke(cli, [*args, "--target", f"{target}:0.7"])  # was "no such file or folder"
    assert r.exit_code == 1 and "without weights (a PATH:WEIGHT mixture is `impsamp resample`'s)" in r.output, r.output
    # embeddings of the generic corpus's `body`, a compare reading `text`: the selections and the tokenizer disagreed
    both = tmp_path / "both.jsonl"
    both.write_text("".join(json.dumps({**json.loads(line), "body": "other words"}) + "\n"
                            for line in generic.read_text().splitlines()))
    emb = embed(open_corpus(both, text_field="body"), tmp_path / "emb", EmbedConfig(model="hashing:64"))
    r = CliRunner().invoke(cli, ["compare", "--generic", str(both), "--target", str(target), "--eval", str(evals),
                                 "--out", str(tmp_path / "cmp"), "--config", str(tmp_path / "c.toml"),
                                 "--embeddings", str(emb.path)])
    assert r.exit_code == 1 and "read --generic's field 'body'" in r.output and "pass --text-field body" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "cmp").exists()


def test_the_demo_refuses_an_unknown_target_before_any_work(tmp_path, monkeypatch):
    """Not after exporting the model and embedding the pool (minutes from an empty cache)."""
    import impsamp.demonstration as demonstration

    def no_work(*args, **kwargs):
        raise AssertionError("the demo embedded before checking --target")

    monkeypatch.setattr(demonstration, "cached_embeddings", no_work)
    r = CliRunner().invoke(cli, ["demo", "--target", "pythondocs", "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "unknown demo domain 'pythondocs'; valid domains:" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "d").exists()
