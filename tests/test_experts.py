"""Cluster experts (SLM-mix): groups, one expert per group, routing, specialization, resume, scale-out."""

from __future__ import annotations

import json
import re
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from impsamp.manifest import MANIFEST

from ._helpers import (CLUSTER_ARGS, EMBED_ARGS, RESAMPLE_ARGS, TIMING, invoke, ok, one_line_error, run_sub,
                       tiny_compare_toml, under_field, with_and_without_text_field,
                       write_corpus)

pytest.importorskip("torch")

TINY = """[experts]
total_tokens = 1536
[experts.train]
n_layer = 1
n_embd = 32
n_head = 2
mlp_hidden = 64
block_size = 32
vocab_size = 300
batch_size = 4
device = "cpu"
checkpoint_every = 2
"""
FT = ["--finetune-steps", "4", "--device", "cpu", "--no-progress"]


def payload(root: Path) -> dict[str, object]:
    """Every file the manifest lists (weights, data, tokenizer, metrics) by relative path, wall-clock
    fields (speeds, timestamps) left out and the output folder's own path (in configs) made relative."""
    m = json.loads((root / MANIFEST).read_text())
    out: dict[str, object] = {}
    for o in m["outputs"]:
        path = root / o["path"]
        if path.name == MANIFEST:
            continue
        if path.suffix in (".json", ".jsonl") and path.name != "tokenizer.json":
            text = path.read_text().replace(str(root), "<out>")
            out[o["path"]] = [_untimed(json.loads(li)) for li in text.splitlines() if li.strip()] \
                if path.suffix == ".jsonl" else _untimed(json.loads(text))
        else:
            out[o["path"]] = path.read_bytes()
    return out


def _untimed(x):
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if k not in TIMING}
    return [_untimed(v) for v in x] if isinstance(x, list) else x


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    p = {"root": root, "generic": write_corpus(root / "generic.jsonl", 240),
         "target": write_corpus(root / "bio.jsonl", 40, seed=1, topics=("bio",), ids=False),
         "toml": root / "tiny.toml", "emb": root / "emb", "clu": root / "clu"}
    p["toml"].write_text(TINY)
    ok(invoke(*EMBED_ARGS(p["generic"], p["emb"])))
    ok(invoke(*CLUSTER_ARGS(p["emb"], p["clu"])))
    p["ex"] = root / "ex"
    ok(invoke("experts", p["emb"], p["clu"], "--out", p["ex"], "--groups", "2", "--config", p["toml"], "--no-progress"))
    return p


def test_groups_split_the_corpus_and_each_expert_is_a_train_run(pipe):
    from impsamp.clustering import Clusters
    from impsamp.mixture import Experts

    ex, clu = Experts.load(pipe["ex"]), Clusters.load(pipe["clu"])
    assert ex.n_groups == 2
    doc_group = ex.groups_of(clu.leaf_assign())
    for g in range(2):
        rows = _group_rows(pipe["ex"], g)
        assert sorted(rows) == sorted(np.flatnonzero(doc_group == g).tolist())  # every document once, in its group
        run = ex.expert(g)
        assert run.metrics["train"]["tokens"] > 0 and (run.path / "model.safetensors").is_file()
    # the budget is split in proportion to the groups' tokens and adds up to the total
    budgets = [g["budget"] for g in ex.per_group]
    assert abs(sum(budgets) - 1536) <= 2
    # every expert loads in evaluate and export
    for g in range(2):
        r = ok(invoke("evaluate", ex.expert_path(g), "--eval", pipe["target"], "--device", "cpu", "--json"))
        assert math.isfinite(json.loads(r.output)["macro_ppl"])
    pytest.importorskip("transformers")
    ok(invoke("export", ex.expert_path(1), pipe["root"] / "hf1"))
    assert (pipe["root"] / "hf1" / "config.json").is_file()


def _group_rows(ex_dir: Path, g: int) -> list[int]:
    files = sorted((ex_dir / f"data/g{g:03d}").glob("*.parquet"))
    return [i for f in files for i in pq.read_table(f, columns=["doc_index"]).column("doc_index").to_pylist()]


def test_routing_scores_each_document_with_its_groups_expert(pipe, tmp_path):
    from impsamp.clustering import Clusters
    from impsamp.io import open_corpus
    from impsamp.mixture import Experts, evaluate_routed
    from impsamp.mixture.routing import route
    from impsamp.training import evaluate

    ex, clu = Experts.load(pipe["ex"]), Clusters.load(pipe["clu"])
    texts = list(open_corpus(pipe["generic"]).iter_texts())
    groups = route(ex, texts)
    assert groups.tolist() == ex.groups_of(clu.leaf_assign()).tolist()  # as the data was split
    # a file of one group's documents: the mixture's score is exactly that expert's
    for g in range(2):
        f = tmp_path / f"g{g}.jsonl"
        f.write_text("".join(json.dumps({"text": t}) + "\n" for t, gr in zip(texts, groups) if gr == g))
        routed = evaluate_routed(ex, [f], device="cpu")["per_file"][str(f)]
        alone = evaluate(ex.expert_path(g), [f], device="cpu")["per_file"][str(f)]
        assert routed["ppl"] == pytest.approx(alone["ppl"], rel=1e-6)
        assert routed["documents_per_group"][g] == sum(groups == g)
        other = evaluate(ex.expert_path(1 - g), [f], device="cpu")["per_file"][str(f)]
        assert routed["ppl"] != pytest.approx(other["ppl"], rel=1e-6)


def test_specialize_top_picks_the_largest_group_and_records_why(pipe):
    from impsamp.clustering import Clusters
    from impsamp.embedding import Embeddings, embed_texts
    from impsamp.io import open_corpus
    from impsamp.mixture import Experts

    ex, clu = Experts.load(pipe["ex"]), Clusters.load(pipe["clu"])
    out = pipe["root"] / "sp-top"
    r = ok(invoke("specialize", pipe["ex"], "--target", pipe["target"], "--out", out, "--eval", pipe["target"], *FT))
    rec = json.loads((out / "specialization.json").read_text())
    vectors, _ = embed_texts(list(open_corpus(pipe["target"]).iter_texts()), Embeddings.load(pipe["emb"]).embedder())
    mass = np.bincount(ex.groups_of(clu.assign(vectors)[:, -1]), minlength=2) / len(vectors)
    assert rec["chosen"] == int(np.argmax(mass)) == rec["top_group"]
    assert rec["group_mass"] == pytest.approx(mass.tolist())
    assert "most target mass" in rec["why"] and f"expert {rec['chosen']}" in r.output
    info = ok(invoke("info", out)).output
    assert "costs (FLOPs):" in info and "generic (paid once)" in info
    from impsamp.training import TrainRun  # one expert runs; all of them are stored (compare patched that in)

    costs = TrainRun.load(out).metrics["costs"]
    assert costs["params_total"] == ex.costs.params_total == ex.n_groups * costs["params_active"]


def test_lowest_loss_and_all_rules(pipe, monkeypatch):
    import importlib

    from impsamp.mixture import Experts
    from impsamp.training import TrainRun

    # the hashing embedder costs nothing to run: a price for embedding the target, to see who pays it
    specializing = importlib.import_module("impsamp.mixture.specializing")
    monkeypatch.setattr(specializing, "encoder_flops", lambda params, tokens: 1e9)
    ex = Experts.load(pipe["ex"])
    low = pipe["root"] / "sp-low"
    ok(invoke("specialize", pipe["ex"], "--target", pipe["target"], "--out", low, "--select", "lowest-loss", *FT))
    rec = json.loads((low / "specialization.json").read_text())
    losses = rec["scores"]["loss_before_finetuning"]
    assert rec["chosen"] == int(np.argmin(losses)) and len(losses) == ex.n_groups
    assert rec["selection_flops"]["scoring_experts"] > 0
    # lowest-loss decides by the experts' losses: the target's embedding is recorded, not charged (it was)
    assert rec["selection_flops"]["target_embedding"] == 1e9
    assert TrainRun.load(low).metrics["costs"]["selection"] == rec["selection_flops"]["scoring_experts"]
    every = pipe["root"] / "sp-all"
    ok(invoke("specialize", pipe["ex"], "--target", pipe["target"], "--out", every, "--select", "all", *FT))
    rec = json.loads((every / "specialization.json").read_text())
    val = rec["scores"]["val_loss_after_finetuning"]
    assert rec["chosen"] == int(np.argmin(val))
    # the winner's weights are its candidate's; its cost counts every candidate's fine-tuning
    cand = every.with_name("sp-all.candidates") / f"g{rec['chosen']:03d}"
    assert (every / "model.safetensors").read_bytes() == (cand / "model.safetensors").read_bytes()
    one = TrainRun.load(low).metrics["costs"]["finetuning"]
    assert TrainRun.load(every).metrics["costs"]["finetuning"] == pytest.approx(ex.n_groups * one)
    # killed after the candidates: a rerun keeps them (same bytes, not retrained) and ends the same
    import shutil

    stamps = {p: p.stat().st_mtime_ns for p in every.with_name("sp-all.candidates").rglob("model.safetensors")}
    before = (every / "model.safetensors").read_bytes()
    shutil.rmtree(every)
    ok(invoke("specialize", pipe["ex"], "--target", pipe["target"], "--out", every, "--select", "all", *FT))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (every / "model.safetensors").read_bytes() == before


def test_specialize_reads_a_sample_whose_text_is_under_another_field(pipe, tmp_path):
    def args(t, out):
        return ["specialize", pipe["ex"], "--select", "lowest-loss", *FT, "--target", t, "--eval", t,
                "--out", out]

    runs = with_and_without_text_field(args, pipe["target"], tmp_path)
    yes, ref = (json.loads((d / "specialization.json").read_text()) for d in runs)
    assert yes["group_mass"] == ref["group_mass"] and yes["scores"] == ref["scores"]
    assert (runs[0] / "model.safetensors").read_bytes() == (runs[1] / "model.safetensors").read_bytes()


def test_bad_inputs_are_one_line_errors(pipe, tmp_path):
    one_line_error(invoke("experts", pipe["emb"], pipe["clu"], "--out", tmp_path / "x", "--groups", "5",
                          "--config", pipe["toml"]), "--groups 5", "4 clusters")
    one_line_error(invoke("experts", pipe["emb"], pipe["clu"], "--out", tmp_path / "x", "--level", "1",
                          "--config", pipe["toml"]), "--level 1")
    one_line_error(invoke("specialize", pipe["root"] / "nope", "--target", pipe["target"], "--out", tmp_path / "s"),
                   "experts")
    # a command that takes one trained model, given the experts folder: where the models are
    one_line_error(invoke("export", pipe["ex"], tmp_path / "hf"), "'experts' output",
                   f"each of its experts is one: {pipe['ex'] / 'experts' / 'g000'}")
    # a target embedded with another model
    other = tmp_path / "other-emb"
    ok(invoke("embed", pipe["target"], "--out", other, "--model", "hashing:32", "--no-progress"))
    one_line_error(invoke("specialize", pipe["ex"], "--target", other, "--out", tmp_path / "s2"), "hashing:32")
    # experts of a clustering that was rebuilt since
    emb2, clu2, ex2 = tmp_path / "emb", tmp_path / "clu", tmp_path / "ex"
    ok(invoke(*EMBED_ARGS(pipe["generic"], emb2)))
    ok(invoke(*CLUSTER_ARGS(emb2, clu2)))
    ok(invoke("experts", emb2, clu2, "--out", ex2, "--groups", "4", "--tokens-per-expert", "256",
              "--config", pipe["toml"], "--no-progress"))
    ok(invoke(*CLUSTER_ARGS(emb2, clu2, "--overwrite", "--seed", "3")))
    one_line_error(invoke("specialize", ex2, "--target", pipe["target"], "--out", tmp_path / "s3"),
                   "not the clustering")
    emb3, clu3 = tmp_path / "emb3", tmp_path / "clu3"  # another model's vectors
    ok(invoke("embed", pipe["generic"], "--out", emb3, "--model", "hashing:32", "--no-progress"))
    ok(invoke(*CLUSTER_ARGS(emb3, clu3)))
    one_line_error(invoke("experts", pipe["emb"], clu3, "--out", tmp_path / "y", "--config", pipe["toml"]),
                   "was not clustered from")
    bad = tmp_path / "bad-tokenizer.json"
    bad.write_text("{}")
    one_line_error(invoke("experts", pipe["emb"], pipe["clu"], "--out", tmp_path / "z", "--tokenizer", bad,
                          "--config", pipe["toml"]), "bad-tokenizer.json")
    assert not (tmp_path / "z").exists()  # refused before the folder was made: the fixed command just runs
    from impsamp.errors import ConfigError
    from impsamp.mixture import ExpertsConfig

    with pytest.raises(ConfigError, match="the experts only pretrain, and a teacher guides fine-tuning"):
        ExpertsConfig(train={"teacher": str(pipe["ex"])})  # before any group data is written
    bad_toml = tmp_path / "bad.toml"  # a bad value in the file is named by the file and its table
    for text, needle in (("[experts.train]\nblock_size = 0\n", "bad.toml [experts.train]: block_size must be > 0"),
                         ("[experts.train]\nlr = 'fast'\n", "bad.toml [experts.train]: lr = 'fast' is a string"),
                         ("[experts]\ngroups = 1\n", "bad.toml [experts]: groups must be >= 2")):
        bad_toml.write_text(text)
        one_line_error(invoke("experts", pipe["emb"], pipe["clu"], "--out", tmp_path / "w", "--config", bad_toml),
                       needle)
    one_line_error(invoke("experts", pipe["emb"], pipe["clu"], "--out", tmp_path / "w", "--config", bad_toml,
                          "--groups", "1"), "--groups must be >= 2")  # the flag's value: the flag
    one_line_error(invoke("specialize", pipe["ex"], "--target", pipe["target"], "--out", tmp_path / "s4",
                          "--select", "all", "--finetune-val-fraction", "0"), "--finetune-val-fraction")
    assert not (tmp_path / "s4").exists() and not (tmp_path / "s4.candidates").exists()
    field = tmp_path / "field.toml"  # the experts read their own data (`text`) and the embedded corpus's field
    field.write_text(TINY + 'text_field = "body"\n')
    one_line_error(invoke("experts", pipe["emb"], pipe["clu"], "--out", tmp_path / "f", "--config", field),
                   "text_field")


def test_killed_experts_resume_and_slices_give_the_same_bytes(pipe, tmp_path):
    args = ["experts", pipe["emb"], pipe["clu"], "--groups", "2", "--config", pipe["toml"], "--no-progress"]
    killed = tmp_path / "killed"
    r = run_sub(*args, "--out", killed, env={"IMPSAMP_TEST_KILL_AT": "pretrain:4"})
    assert r.returncode != 0 and not (killed / MANIFEST).exists()
    r = run_sub(*args, "--out", killed)
    assert r.returncode == 0, r.stderr
    want = payload(pipe["ex"])
    assert payload(killed) == want
    sliced = tmp_path / "sliced"
    said = []
    for i in (1, 0):
        said.append(ok(invoke(*args, "--out", sliced, "--num-shards", "2", "--shard-index", str(i))).output)
        assert not (sliced / MANIFEST).exists()
    ok(invoke("finalize", sliced))
    assert payload(sliced) == want
    # the first slice wrote every shard's group data (and its expert); the second found the data written
    (first, total), (second, _) = (map(int, re.search(r"committed (\d+) shard.*of (\d+) done", o).groups()) for o in said)
    assert (first, second) == (total - 1, 1), said


def test_a_slice_writes_its_own_group_data_first_then_the_others_from_the_last(monkeypatch, tmp_path):
    """Slices running together start on different shards and meet once, each shard claimed by one of them."""
    from types import SimpleNamespace

    from impsamp.mixture import stage
    from impsamp.scale import Execution

    wrote = []
    monkeypatch.setattr(stage, "_write_shard_groups", lambda run, inputs, grouping, s, name: wrote.append(s))
    run = SimpleNamespace(out_dir=tmp_path, is_done=lambda name: name == "d3")
    names = [f"d{s}" for s in range(6)]
    assert stage._write_group_data(run, None, None, names, False, Execution(num_shards=2, shard_index=1)) == 5
    assert wrote == [1, 5, 4, 2, 0] and not list(tmp_path.iterdir())  # d3 done already; no claim file left
    # a shard another slice is writing is passed over, then waited for (and found undone here: written)
    import threading

    from impsamp.guards import claim

    taken, let_go = threading.Event(), threading.Event()

    def other_slice():
        with claim(tmp_path, "d5"):
            taken.set()
            let_go.wait(30)

    holder = threading.Thread(target=other_slice)
    holder.start()
    taken.wait(10)
    threading.Timer(1.0, let_go.set).start()
    wrote.clear()
    assert stage._write_group_data(run, None, None, names, False, Execution(num_shards=2, shard_index=1)) == 5
    holder.join(10)
    assert wrote == [1, 4, 2, 0, 5] and not list(tmp_path.iterdir())


def test_ray_experts_give_the_same_bytes(pipe, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    r = run_sub("experts", pipe["emb"], pipe["clu"], "--out", out, "--groups", "2", "--config", pipe["toml"],
                "--engine", "ray", "--no-progress", timeout=300)
    assert r.returncode == 0, r.stderr
    assert payload(out) == payload(pipe["ex"])


def test_compare_with_experts_reports_costs_and_the_chosen_expert(pipe, tmp_path):
    from impsamp.comparison import Report
    from impsamp.mixture import Experts

    toml = tiny_compare_toml(tmp_path / "c.toml")
    out = tmp_path / "cmp"
    # the user's files hold their text under `body`; the selections and the experts' data under `text`
    generic, target = (under_field(pipe[k], tmp_path / f"{k}.jsonl") for k in ("generic", "target"))
    r = ok(invoke("compare", "--generic", generic, "--target", target, "--eval", target,
                  "--out", out, "--methods", "uniform,importance", "--models", "dense,experts", "--groups", "2",
                  "--tokens", "2000", "--k", "4", "--steps", "4", "--finetune-steps", "2", "--config", toml,
                  "--no-progress", "--text-field", "body", "--select", "all", "--dtype", "float32"))
    assert "| experts G=2 (all) |" in r.output and "| dense, importance |" in r.output
    res = Report.load(out).results
    e, uniform, imp = res["models"]["experts"], res["methods"]["uniform"], res["methods"]["importance"]
    # equal generic pretraining FLOPs (to whole steps), one expert's size at inference
    assert e["costs"]["generic"] == uniform["costs"]["generic"]  # whole steps: exactly the dense FLOPs
    assert e["costs"]["params_total"] == 2 * e["costs"]["params_active"] == 2 * uniform["costs"]["params_active"]
    assert imp["costs"]["generic"] == 0 and imp["costs"]["pretraining"] > 0
    assert uniform["costs"]["pretraining"] == 0
    assert 0 < e["target_mass_on_chosen"] <= 1 and e["chosen"] in (0, 1)
    assert "Experts: 2 groups" in (out / "report.md").read_text()
    # every model at the compare's --dtype and LM seed (the experts trained at `auto` and seed 0 whatever was asked)
    ex = Experts.load(out / "experts")
    assert ex.expert(0).config.dtype == "float32" and ex.manifest.config["seed"] == res["config"]["seed"]
    _a_resumed_compare_keeps_the_finished_specialization(out, res, [str(target)])


def _a_resumed_compare_keeps_the_finished_specialization(out, res, targets):
    """Resumed, a compare fine-tuned every candidate of `--select all` and the winner again: the settings it
    compared with were not those `specialize` records."""
    import importlib

    specialize = importlib.import_module("impsamp.mixture.specializing")
    stage = importlib.import_module("impsamp.mixture.stage")
    from impsamp.clustering import Clusters
    from impsamp.comparison import CompareConfig, _train_config
    from impsamp.config import from_dict
    from impsamp.embedding import Embeddings
    from impsamp.mixture.strategy import experts_entry

    cfg = from_dict(CompareConfig, res["config"])
    tcfg = _train_config(out, cfg, None, False)  # the tokenizer is there: only the settings
    evals = [e["path"] for e in json.loads((out / MANIFEST).read_text())["inputs"]["eval"]]

    def refuse(*a, **k):
        raise AssertionError("redone")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(specialize, "specialize", refuse)
        mp.setattr(stage, "experts", refuse)
        entry = experts_entry(out, cfg, tcfg, Embeddings.load(out / "embeddings"), Clusters.load(out / "clusters"),
                              targets, evals, False, lambda *a: None)
    assert entry["metrics"] == res["models"]["experts"]["metrics"]


def test_resample_selection_counts_as_per_target_pretraining(pipe, tmp_path):
    from impsamp.training import TrainRun

    sel = tmp_path / "sel"
    ok(invoke(*RESAMPLE_ARGS(pipe["emb"], pipe["clu"], pipe["target"], sel)))
    out = tmp_path / "lm"
    ok(invoke("train", "--data", sel, "--out", out, "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
              "--mlp-hidden", "64", "--block-size", "32", "--vocab-size", "300", "--batch-size", "4", "--steps", "3",
              "--device", "cpu", "--no-progress"))
    c = TrainRun.load(out).metrics["costs"]
    assert c["generic"] == 0 and c["pretraining"] > 0 and c["per_target"] == c["pretraining"]


def test_level_groups_follow_the_tree(pipe, tmp_path):
    from impsamp.clustering import Clusters
    from impsamp.histograms import leaf_ancestors
    from impsamp.mixture import Experts

    tree = tmp_path / "tree"
    ok(invoke("cluster", pipe["emb"], "--out", tree, "--levels", "2,2", "--seed", "0", "--no-progress"))
    out = tmp_path / "ex"
    r = ok(invoke("experts", pipe["emb"], tree, "--out", out, "--level", "0", "--tokens-per-expert", "256",
                  "--config", pipe["toml"], "--no-progress"))
    assert "level 0 of the tree" in r.output
    ex, clu = Experts.load(out), Clusters.load(tree)
    assert ex.n_groups == 2 and ex.grouping.leaf_group.tolist() == leaf_ancestors(clu)[0].tolist()
    assert all(g["budget"] == 256 for g in ex.per_group)
    one_line_error(invoke("experts", pipe["emb"], tree, "--out", tmp_path / "x", "--level", "0", "--groups", "3",
                          "--config", pipe["toml"]), "disagree")
    # [experts] preset = ..., as the flag
    named = tmp_path / "named.toml"
    named.write_text(TINY.replace("[experts]\n", '[experts]\npreset = "mini"\n'))
    ok(invoke("experts", pipe["emb"], tree, "--out", tmp_path / "m", "--level", "0", "--config", named,
              "--no-progress"))
    assert Experts.load(tmp_path / "m").expert(0).config.preset == "mini"
    # a group too small for one training sequence: named, with the experts' own remedies
    long = tmp_path / "long.toml"
    long.write_text(TINY.replace("block_size = 32", "block_size = 4096"))
    one_line_error(invoke("experts", pipe["emb"], tree, "--out", tmp_path / "y", "--level", "1",
                          "--config", long), ": its group holds", "4096 + 1", "[experts.train]")
    assert not (tmp_path / "y" / "experts").exists()  # found before any expert began to train


@pytest.mark.slow
def test_real_model_experts_specialize_on_the_bundled_corpus(tmp_path):
    """The real path: all-MiniLM-L6-v2 vectors of bundled documents, k-means, two experts, a real target."""
    import os

    import pyarrow as pa

    from impsamp.clustering import ClusterConfig, cluster
    from impsamp.datasets import demo_corpus
    from impsamp.embedding import EmbedConfig, embed
    from impsamp.mixture import ExpertsConfig, evaluate_routed, experts, specialize

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    corpus = demo_corpus()
    pool = pq.read_table(corpus.pool)
    rows = np.sort(np.random.default_rng(0).choice(pool.num_rows, 320, replace=False))
    pq.write_table(pool.take(pa.array(rows)).select(["id", "text"]), tmp_path / "pool.parquet")
    emb = embed(tmp_path / "pool.parquet", tmp_path / "emb",
                config=EmbedConfig(max_tokens=16, backend="torch", precision="float32"))
    clu = cluster(emb, tmp_path / "clu", config=ClusterConfig(k=6, seed=0))
    shape = dict(n_layer=1, n_embd=32, n_head=2, mlp_hidden=64, block_size=32, vocab_size=300, batch_size=4,
                 device="cpu")
    ex = experts(emb, clu, tmp_path / "ex", ExpertsConfig(groups=2, total_tokens=2048, train=shape))
    run = specialize(ex, [corpus.sample("python_docs")], tmp_path / "sp", select="top",
                     config={"finetune_steps": 2, "batch_size": 4, "device": "cpu"},  # a dict, as anywhere
                     eval=[corpus.eval("python_docs")])
    rec = json.loads((tmp_path / "sp" / "specialization.json").read_text())
    assert rec["chosen"] == int(np.argmax(rec["group_mass"])) and rec["target_mass_on_chosen"] > 0.5
    # embedding the 200-document sample with the 22.7M-parameter encoder is counted per target (2N per text
    # token it read: 14 of the 16-token window, the other 2 are [CLS] and [SEP])
    assert rec["selection_flops"]["target_embedding"] == pytest.approx(2 * 22_713_216 * 200 * 14, rel=0.01)
    assert run.metrics["costs"]["selection"] == rec["selection_flops"]["target_embedding"]
    # embedding the generic pool grouped its documents: paid once, with the experts' pretraining
    assert emb.flops == pytest.approx(2 * 22_713_216 * emb.manifest.stats["tokens"]) and emb.flops > 0
    pretraining = sum(ex.expert(g).metrics["costs"]["generic"] for g in range(2))
    assert ex.costs.generic == pytest.approx(pretraining + emb.flops)
    assert run.metrics["costs"]["generic"] == pytest.approx(ex.costs.generic)
    routed = evaluate_routed(ex, [corpus.eval("python_docs")], device="cpu")
    per = routed["per_file"][str(corpus.eval("python_docs"))]
    assert math.isfinite(per["ppl"]) and sum(per["documents_per_group"]) == 200
    # held-out python_docs goes mostly where the sample's mass is
    assert per["documents_per_group"][rec["chosen"]] >= 100


def test_an_experts_budget_too_small_for_a_step_each_is_said_and_a_typo_refused(caplog):
    """`--total-tokens 1e30` overflowed the step arithmetic and spun; a budget under one step per expert was
    exceeded in silence (each expert trains at least one step)."""
    import logging

    from impsamp.errors import ConfigError
    from impsamp.mixture import ExpertsConfig
    from impsamp.mixture.stage import _split_budget

    with pytest.raises(ConfigError, match="--total-tokens 1e\\+30 is over 1e\\+15 tokens"):
        ExpertsConfig(groups=2, total_tokens=1e30)
    shape = {"block_size": 32, "batch_size": 4}  # 128 tokens a step
    cfg = ExpertsConfig(groups=4, total_tokens=128 * 10, train=shape)
    with caplog.at_level(logging.WARNING, logger="impsamp"):
        assert sum(_split_budget(cfg, np.array([5.0, 3.0, 1.0, 1.0]))) == 128 * 10 and not caplog.records
        small = ExpertsConfig(groups=4, total_tokens=200, train=shape)
        assert _split_budget(small, np.array([5.0, 3.0, 1.0, 1.0])) == [128] * 4
    assert "4 experts train at least one step of 128 tokens each: 512 tokens in all, not the 200" in caplog.text
