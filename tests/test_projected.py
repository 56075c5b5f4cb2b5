"""Projected networks (SLM-pn) and a soup of experts: the shared model, its training, `project`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from impsamp.manifest import MANIFEST

from ._helpers import (CLUSTER_ARGS, EMBED_ARGS, TRAIN_FLAGS, invoke, ok, one_line_error, run_sub, tiny_compare_toml,
                       under_field, with_and_without_text_field, write_corpus)

torch = pytest.importorskip("torch")

from impsamp.training.shape import ModelConfig, Projection  # noqa: E402

PN_FLAGS = ["--arch", "projected", "--basis", "3", "--code-dim", "3", "--steps", "6", "--checkpoint-every", "2",
            *TRAIN_FLAGS]


def shape(condition="cluster", codes="learned", k=4, h=3, m=3, layers=2) -> ModelConfig:
    if codes == "onehot":
        h = m = k
    return ModelConfig(vocab_size=128, n_layer=layers, n_embd=32, n_head=2, mlp_hidden=48, block_size=16,
                       projection=Projection(n_codes=k, n_basis=h, code_dim=m, condition=condition, codes=codes))


def network(cfg: ModelConfig, seed: int = 0):
    from impsamp.training.projected import ProjectedGPT

    torch.manual_seed(seed)
    return ProjectedGPT(cfg)


def adamw(model):
    from impsamp.training.config import TrainConfig
    from impsamp.training.loop import _optimizer

    return _optimizer(model, TrainConfig(), torch.device("cpu"))


def step(model, opt, cond, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 128, (3, 16), generator=g)
    y = torch.randint(0, 128, (3, 16), generator=g)
    model(x, y, cond=cond).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("condition,codes", [("cluster", "learned"), ("histogram", "learned"),
                                             ("cluster", "onehot"), ("histogram", "onehot")])
def test_projected_small_model_gives_the_networks_logits(condition, codes):
    cfg = shape(condition, codes)
    model = network(cfg)
    opt = adamw(model)
    for i in range(3):  # trained a little, so codes and bases are not at their init
        step(model, opt, i % 4 if condition == "cluster" else np.array([0.5, 0.0, 0.25, 0.25]), seed=i)
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(9))
    conds = [0, 2] if condition == "cluster" else [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.0, 1.0, 0.0, 0.0])]
    for cond in conds:
        small = model.project(cond)
        assert type(small).__name__ == "GPT" and small.config.projection is None
        torch.testing.assert_close(small(x), model(x, cond=cond), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params()


def test_projected_model_has_exactly_the_dense_presets_parameters():
    from impsamp.training import TrainConfig

    cfg = TrainConfig(arch="projected", clusters="unused", basis=4, code_dim=4)
    pn = cfg.model_config(4096, n_codes=8)
    dense = TrainConfig().model_config(4096)
    mlp = 3 * 256 * 768  # gate, up, down of one layer
    assert pn.n_active_params() == dense.n_params()
    assert pn.n_params() == dense.n_params() + 4 * (3 * mlp + 4 * 4) + 8 * 4 + 4  # 3 more bases, M, codes, base
    assert pn.flops_per_token() == dense.flops_per_token()
    small = network(pn).project(3)
    assert sum(p.numel() for p in small.parameters()) == dense.n_params() == small.config.n_params()


def test_a_step_changes_only_its_batchs_code():
    model = network(shape("cluster", "learned", k=5))
    opt = adamw(model)
    step(model, opt, 1, seed=0)  # code 1 now has AdamW moments; a later step elsewhere must not move it
    before = snapshot(model)
    step(model, opt, 3, seed=1)
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    codes = {k for k in changed if k.startswith("codes.")}
    assert codes == {"codes.3"}, codes
    assert any(".gate_up_basis." in k for k in changed) and "wte.weight" in changed  # the shared part trains


def test_onehot_codes_train_each_clusters_mlp_like_an_expert():
    model = network(shape("cluster", "onehot", k=4))
    opt = adamw(model)
    step(model, opt, 0, seed=0)
    before = snapshot(model)
    step(model, opt, 2, seed=1)
    after = snapshot(model)
    bases = {k for k in before if "_basis." in k and not torch.equal(before[k], after[k])}
    assert bases == {f"h.{i}.mlp.{w}_basis.2" for i in range(2) for w in ("gate_up", "down")}, bases
    # cluster 2's basis gets exactly the gradient its own dense model (an expert) gets on the batch
    small = model.project(2)
    x, y = torch.randint(0, 128, (3, 16)), torch.randint(0, 128, (3, 16))
    model(x, y, cond=2).backward()
    small(x, y).backward()
    for i in range(2):
        torch.testing.assert_close(model.h[i].mlp.gate_up_basis[2].grad, small.h[i].mlp.gate_up.weight.grad)
        torch.testing.assert_close(model.h[i].mlp.down_basis[2].grad, small.h[i].mlp.down.weight.grad)
        assert model.h[i].mlp.gate_up_basis[0].grad is None


def test_conditions_are_checked():
    model = network(shape("cluster"))
    x = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="needs a condition"):
        model(x)
    with pytest.raises(ValueError, match="out of range"):
        model(x, cond=7)
    with pytest.raises(ValueError, match="one cluster"):
        model(x, cond=np.ones(4))
    soup = network(shape("histogram"))
    with pytest.raises(ValueError, match="4 weights"):
        soup(x, cond=np.ones(3))


def test_histogram_batches_mix_clusters_and_carry_their_composition(tmp_path):
    from impsamp.training.conditioned import GroupBatches, GroupBins
    from impsamp.training.data import TokenBin

    bins = []
    for g in range(4):
        path = tmp_path / f"g{g}.bin"
        np.full(400, g, dtype=np.uint16).tofile(path)
        bins.append(TokenBin(str(path), "uint16", 400, 1, 400))
    groups = GroupBins(bins, bins, "test", [0, 1, 2, 3], {"path": "x"})
    soup = GroupBatches(groups, block_size=8, batch_size=16, seed=0, condition="histogram")
    sizes = set()
    for s in range(30):
        x, y, hist = soup.get(s)
        counts = np.bincount(x[:, 0].numpy(), minlength=4)  # every token of a row is its group's id
        assert np.allclose(hist, counts / 16) and (x == x[:, :1]).all()
        sizes.add(int((hist > 0).sum()))
    assert sizes == {1, 2, 3, 4}
    one = GroupBatches(groups, block_size=8, batch_size=16, seed=0, condition="cluster")
    drawn = [one.get(s)[2] for s in range(40)]
    assert all(isinstance(c, int) for c in drawn) and len(set(drawn)) == 4
    assert all((one.get(s)[0] == drawn[s]).all() for s in range(5))
    x0, _, c0 = one.get(3)
    x1, _, c1 = GroupBatches(groups, block_size=8, batch_size=16, seed=0, condition="cluster").get(3)
    assert c0 == c1 and torch.equal(x0, x1)


# ---- the trainer and `impsamp project`, end to end on a small hashed-embedding clustering


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("projected")
    p = {"root": root, "generic": write_corpus(root / "generic.jsonl", 240),
         "target": write_corpus(root / "bio.jsonl", 40, seed=1, topics=("bio",), ids=False),
         "emb": root / "emb", "clu": root / "clu", "pn": root / "pn", "soup": root / "soup"}
    ok(invoke(*EMBED_ARGS(p["generic"], p["emb"])))
    ok(invoke(*CLUSTER_ARGS(p["emb"], p["clu"])))
    ok(invoke("train", "--clusters", p["clu"], "--out", p["pn"], *PN_FLAGS))
    ok(invoke("train", "--clusters", p["clu"], "--out", p["soup"], "--condition", "histogram", *PN_FLAGS))
    return p


def test_a_network_conditioned_on_clusters_pays_for_embedding_the_generic_corpus_once(pipe, monkeypatch):
    from impsamp import costs
    from impsamp.clustering import Clusters
    from impsamp.training.provenance import one_time_work

    monkeypatch.setitem(costs.ENCODERS, "hashing", 1000)  # the test embedder, priced: unknown ones cost 0
    emb = Clusters.load(pipe["clu"]).embeddings()
    work = one_time_work([], str(pipe["clu"]), per_target=False)
    assert work == {f"embed:{emb.manifest.fingerprint}": ("generic", emb.flops)}
    assert emb.flops == 2 * 1000 * emb.manifest.stats["tokens"] > 0
    assert one_time_work([str(pipe["generic"])], None, per_target=True) == {}  # a corpus, not a selection


def test_projected_training_records_its_conditioning_and_costs(pipe):
    from impsamp.training import TrainRun

    run = TrainRun.load(pipe["pn"])
    info = json.loads((pipe["pn"] / "config.json").read_text())
    assert run.config.arch == "projected" and run.model_config.projection.n_codes == 4
    cond = info["conditioning"]
    assert cond["groups"] == 4 and cond["leaf_group"] == [0, 1, 2, 3] and cond["condition"] == "cluster"
    costs = run.metrics["costs"]
    assert costs["generic"] == run.model_config.flops_per_token() * run.metrics["train"]["tokens"]  # + 0: hashing
    assert costs["per_target"] == 0 and costs["params_total"] == run.model_config.n_params()
    assert costs["params_active"] == run.model_config.dense().n_params()
    steps = [json.loads(li) for li in (pipe["pn"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "val_loss" in r] == [2, 4, 6] and all(r["val_loss"] for r in steps
                                                                                if "val_loss" in r)


def test_project_makes_a_dense_run_that_evaluate_and_init_take(pipe, tmp_path):
    from impsamp.training import TrainRun, evaluate

    for net in ("pn", "soup"):
        out = tmp_path / net
        r = ok(invoke("project", pipe[net], "--target", pipe["target"], "--out", out))
        assert "dense model" in r.output
        small = TrainRun.load(out)
        rec = json.loads((out / "projection.json").read_text())
        assert small.config.arch == "dense" and small.model_config.projection is None
        assert np.isclose(sum(rec["group_mass"]), 1.0)
        if net == "pn":
            assert rec["condition"] == int(np.argmax(rec["group_mass"]))
        else:
            assert rec["condition"] == "histogram"
        # the small model scores like the network under that condition
        shared = TrainRun.load(pipe[net]).load_model()
        cond = rec["condition"] if net == "pn" else np.asarray(rec["group_mass"])
        x = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(small.load_model()(x), shared(x, cond=cond), rtol=1e-5, atol=1e-5)
        costs = small.metrics["costs"]
        assert costs["generic"] == TrainRun.load(pipe[net]).metrics["costs"]["generic"] and costs["selection"] > 0
        ppl = evaluate(out, [pipe["target"]])["macro_ppl"]
        ft = tmp_path / f"{net}-ft"
        ok(invoke("train", "--init", out, "--finetune", pipe["target"], "--finetune-steps", "2", "--eval",
                  pipe["target"], "--out", ft, "--device", "cpu", "--no-progress"))
        tuned = TrainRun.load(ft)
        assert tuned.metrics["pretrained"]["macro_ppl"] == pytest.approx(ppl)
        assert tuned.metrics["costs"]["generic"] == costs["generic"]
        # the network stays what is stored (it recorded the small model's parameters: compare patched them in)
        assert tuned.metrics["costs"]["params_total"] == costs["params_total"] == TrainRun.load(pipe[net]).model_config.n_params()
        assert tuned.metrics["costs"]["params_active"] == tuned.model_config.n_params() < costs["params_total"]
    r = ok(invoke("project", pipe["pn"], "--cluster", "2", "--out", tmp_path / "c2"))
    rec = json.loads((tmp_path / "c2" / "projection.json").read_text())
    assert rec["condition"] == 2 and rec["why"] == "--cluster 2" and "target" not in r.output


def test_project_reads_a_target_whose_text_is_under_another_field(pipe, tmp_path):
    runs = with_and_without_text_field(lambda t, out: ["project", pipe["pn"], "--target", t, "--out", out],
                                       pipe["target"], tmp_path)
    yes, ref = (json.loads((d / "projection.json").read_text()) for d in runs)
    assert yes["group_mass"] == ref["group_mass"]
    assert (yes["text_field"], ref["text_field"]) == ("body", "text")  # the record says how it was read


def test_a_network_reads_its_clusterings_corpus_with_the_field_it_was_embedded_with(pipe, tmp_path):
    body = under_field(pipe["generic"], tmp_path / "generic.jsonl")
    emb, clu = tmp_path / "emb", tmp_path / "clu"
    ok(invoke(*EMBED_ARGS(body, emb, "--text-field", "body")))
    ok(invoke(*CLUSTER_ARGS(emb, clu)))
    ok(invoke("train", "--clusters", clu, "--out", tmp_path / "pn", *PN_FLAGS))  # no --text-field needed


def test_routed_evaluation_scores_each_document_with_its_clusters_small_model(pipe, tmp_path):
    from impsamp.errors import ConfigError
    from impsamp.projection import evaluate_projected, project
    from impsamp.training import evaluate

    from impsamp.clustering import Clusters
    from impsamp.io import open_corpus
    from impsamp.mixture.routing import route_to_groups

    # the target's documents of its largest cluster: routed, each must be scored by that cluster's small model
    texts = list(open_corpus(pipe["target"]).iter_texts())
    groups = route_to_groups(Clusters.load(pipe["clu"]), np.arange(4), texts)
    g = int(np.bincount(groups[groups >= 0]).argmax())
    one = tmp_path / "one-cluster.jsonl"
    one.write_text("".join(json.dumps({"text": t}) + "\n" for t, k in zip(texts, groups, strict=True) if k == g))
    routed = evaluate_projected(pipe["pn"], [one], device="cpu")["per_file"][str(one)]
    assert routed["documents_per_group"][g] == int((groups == g).sum()) == sum(routed["documents_per_group"])
    project(pipe["pn"], tmp_path / "g", cluster=g)
    for bad in (float(g), True):  # were an IndexError and a TypeError from numpy
        with pytest.raises(ConfigError, match="--cluster must be a cluster number"):
            project(pipe["pn"], tmp_path / "bad", cluster=bad)
    assert routed["ppl"] == pytest.approx(evaluate(tmp_path / "g", [one])["per_file"][str(one)]["ppl"], rel=1e-6)
    whole = evaluate_projected(pipe["pn"], [pipe["target"]], device="cpu")["per_file"][str(pipe["target"])]
    r = ok(invoke("evaluate", pipe["pn"], "--eval", pipe["target"], "--progress"))
    assert f"{whole['ppl']:.2f}" in r.output and "scoring group" in r.output  # a bar per group while it scores
    # the Python API: impsamp.evaluate routes as the command does; the dense scorer says where to go
    import impsamp

    assert impsamp.evaluate(pipe["pn"], [pipe["target"]], device="cpu") == evaluate_projected(
        pipe["pn"], [pipe["target"]], device="cpu")
    with pytest.raises(ConfigError, match="projected network.*impsamp.evaluate"):
        evaluate(pipe["pn"], [one])
    with pytest.raises(ConfigError, match="final weights; drop --weights"):
        impsamp.evaluate(pipe["pn"], [one], weights="pretrained.safetensors")
    assert impsamp.evaluate(tmp_path / "g", [one])["per_file"][str(one)]["ppl"] == pytest.approx(routed["ppl"], rel=1e-6)


def test_killed_projected_run_resumes_to_the_same_weights(pipe, tmp_path):
    args = ["train", "--clusters", pipe["clu"], *PN_FLAGS, "--out", tmp_path / "k"]
    r = run_sub(*args, env={"IMPSAMP_TEST_KILL_AT": "pretrain:3"})
    assert r.returncode != 0 and not (tmp_path / "k" / MANIFEST).exists()
    r = run_sub(*args)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "k" / "model.safetensors").read_bytes() == (pipe["pn"] / "model.safetensors").read_bytes()


def test_projected_bad_inputs_are_one_line_errors(pipe, tmp_path):
    one_line_error(invoke("train", "--arch", "projected", "--data", pipe["generic"], "--out", tmp_path / "a",
                          *TRAIN_FLAGS), "--clusters")
    one_line_error(invoke("train", "--clusters", pipe["clu"], "--data", pipe["generic"], "--out", tmp_path / "b",
                          *PN_FLAGS), "--data")
    one_line_error(invoke("train", "--clusters", pipe["clu"], "--out", tmp_path / "c", *TRAIN_FLAGS),
                   "--arch projected")
    one_line_error(invoke("train", "--clusters", pipe["clu"], "--codes", "onehot", "--out", tmp_path / "d",
                          *PN_FLAGS), "--codes onehot")
    one_line_error(invoke("project", pipe["pn"], "--out", tmp_path / "e"), "--target")
    one_line_error(invoke("project", pipe["pn"], "--cluster", "9", "--out", tmp_path / "f"), "--cluster 9")
    # a histogram of another clustering
    emb2, clu2 = tmp_path / "emb2", tmp_path / "clu2"
    ok(invoke("embed", pipe["generic"], "--out", emb2, "--model", "hashing:32", "--no-progress"))
    ok(invoke(*CLUSTER_ARGS(emb2, clu2)))
    from impsamp.histograms import histogram

    hist = histogram(pipe["target"], clu2).save(tmp_path / "other.hist.json")
    one_line_error(invoke("project", pipe["pn"], "--target", hist, "--out", tmp_path / "g"), "another clustering")
    # a dense run is not a projected network
    dense = tmp_path / "dense"
    ok(invoke("train", "--data", pipe["generic"], "--out", dense, "--steps", "2", *TRAIN_FLAGS))
    one_line_error(invoke("project", dense, "--cluster", "0", "--out", tmp_path / "h"), "--arch projected")


def test_what_a_network_was_made_from_is_no_output_and_it_teaches_no_one(pipe, tmp_path, monkeypatch):
    """`project --out` the network's own clustering (what its manifest records, given relative to another
    folder), or a folder inside a stage output it reads, is refused in one line with --overwrite; a
    projected network is no `--teacher`."""
    import shutil

    clu = tmp_path / "clu"
    shutil.copytree(pipe["clu"], clu)
    net = tmp_path / "pn"
    monkeypatch.chdir(tmp_path)
    ok(invoke("train", "--clusters", "clu", "--out", net, *PN_FLAGS))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    before = sorted(p.name for p in clu.iterdir())
    one_line_error(invoke("project", net, "--target", pipe["target"], "--out", clu, "--overwrite"),
                   "also an input of this run")
    one_line_error(invoke("project", net, "--target", pipe["target"], "--out", net / "sub"),
                   "a finished impsamp output")
    assert sorted(p.name for p in clu.iterdir()) == before and not (net / "sub").exists()
    small = tmp_path / "small"
    ok(invoke("project", net, "--target", pipe["target"], "--out", small))
    one_line_error(invoke("distill", "--teacher", net, "--student", small, "--target", pipe["target"],
                          "--out", tmp_path / "d", "--finetune-steps", "2"), "a teacher is a dense model")
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_torchrun_trains_a_projected_network_and_resumes_after_a_crash(pipe, tmp_path):
    """Two gloo ranks: every rank conditions a step on the same cluster, the replicas stay equal
    (the trainer checks), and a crash of rank 1 resumes to the uninterrupted job's weights."""
    import subprocess
    import sys

    from ._helpers import ENV

    def torchrun(out, kill_at=None):
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "impsamp", "train", "--clusters", str(pipe["clu"]), *map(str, PN_FLAGS), "--out", str(out)]
        env = {**ENV, "TMPDIR": str(tmp_path), **({"IMPSAMP_TEST_KILL_AT": kill_at} if kill_at else {})}
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)

    ref = torchrun(tmp_path / "ref")
    assert ref.returncode == 0, ref.stdout + ref.stderr
    assert json.loads((tmp_path / "ref" / "config.json").read_text())["world_size"] == 2
    assert torchrun(tmp_path / "run", kill_at="pretrain:3:1").returncode != 0
    resumed = torchrun(tmp_path / "run")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()


def test_compare_with_projected_and_soup_at_the_dense_models_generic_flops(pipe, tmp_path):
    from impsamp.comparison import Report
    from impsamp.training import TrainRun

    toml = tiny_compare_toml(tmp_path / "c.toml")
    out = tmp_path / "cmp"
    generic, target = (under_field(pipe[k], tmp_path / f"{k}.jsonl") for k in ("generic", "target"))  # text: `body`
    r = ok(invoke("compare", "--generic", generic, "--target", target, "--eval", target,
                  "--out", out, "--methods", "uniform", "--models", "dense,projected,soup", "--tokens", "2000",
                  "--k", "4", "--steps", "4", "--finetune-steps", "2", "--config", toml, "--no-progress",
                  "--text-field", "body", "--basis", "3"))
    assert "| soup of experts |" in r.output and "| projected network (cluster " in r.output
    res = Report.load(out).results
    uniform = res["methods"]["uniform"]
    for name in ("projected", "soup"):
        e = res["models"][name]
        assert e["costs"]["generic"] == uniform["costs"]["generic"]  # same steps, batch and active size
        assert e["costs"]["params_active"] == uniform["costs"]["params_active"] < e["costs"]["params_total"]
        assert e["costs"]["finetuning"] == uniform["costs"]["finetuning"]
        assert e["metrics"]["finetuned"]["macro_ppl"] > 1
    assert "Soup of experts: one shared network with h = 3 basis matrices per layer" in (out / "report.md").read_text()
    assert all(res["models"][n]["basis"] == 3 == TrainRun.load(out / n).model_config.projection.n_basis
               for n in ("projected", "soup"))  # --basis reached both networks (h was 16 whatever was asked)
    one_line_error(invoke("compare", "--generic", generic, "--target", target, "--eval", target, "--out", tmp_path / "b",
                          "--methods", "uniform", "--basis", "3"), "--basis", "--models")  # no network to shape
    _a_resumed_compare_keeps_the_finished_projections(out, [str(target)])


def _a_resumed_compare_keeps_the_finished_projections(out, targets):
    """A compare resumed after a kill re-projected and re-fine-tuned a finished projected network and soup."""
    import impsamp.projection as projection
    import impsamp.training as training
    from impsamp.clustering import Clusters
    from impsamp.comparison import CompareConfig, Report, _train_config
    from impsamp.config import from_dict
    from impsamp.io import open_corpus

    res = Report.load(out).results
    cfg = from_dict(CompareConfig, res["config"])
    generic = open_corpus(sorted(str(p) for p in (out.parent).glob("generic.jsonl")), text_field=cfg.text_field)
    tcfg = _train_config(out, cfg, generic, False)  # the tokenizer is there: only the settings
    evals = [e["path"] for e in json.loads((out / MANIFEST).read_text())["inputs"]["eval"]]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/" + MANIFEST)}

    def refuse(*a, **k):
        raise AssertionError("redone")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(projection, "project", refuse)
        mp.setattr(training, "train", refuse)
        for name, condition in (("projected", "cluster"), ("soup", "histogram")):
            entry = projection.projected_entry(out, cfg, tcfg, Clusters.load(out / "clusters"), targets, evals, False,
                                               lambda *a: None, condition)
            assert entry["metrics"] == res["models"][name]["metrics"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_level_conditions_on_the_nodes_of_a_tree_level(pipe, tmp_path):
    from impsamp.clustering import Clusters
    from impsamp.histograms import leaf_ancestors
    from impsamp.training import TrainRun

    tree = tmp_path / "tree"
    ok(invoke("cluster", pipe["emb"], "--out", tree, "--levels", "2,2", "--seed", "0", "--no-progress"))
    ok(invoke("train", "--clusters", tree, "--level", "0", "--out", tmp_path / "pn", *PN_FLAGS))
    info = json.loads((tmp_path / "pn" / "config.json").read_text())["conditioning"]
    clu = Clusters.load(tree)
    assert info["groups"] == 2 and info["leaf_group"] == leaf_ancestors(clu)[0].tolist()
    assert TrainRun.load(tmp_path / "pn").model_config.projection.n_codes == 2
    one_line_error(invoke("train", "--clusters", tree, "--level", "2", "--out", tmp_path / "x", *PN_FLAGS),
                   "--level 2")
    one_line_error(invoke("export", pipe["pn"], tmp_path / "hf"), "impsamp project")
