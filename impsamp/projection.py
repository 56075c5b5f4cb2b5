"""`project()`: the small model of a projected network (or a soup of experts) for one target, in seconds.

    small = impsamp.project("runs/pn", "runs/law-pn", target="law-sample.jsonl")
    train(None, "runs/law", TrainConfig(init=str(small.path), finetune_steps=60), finetune=["law-sample.jsonl"])

The target's documents are assigned to the network's clusters (embedded like the generic corpus, or
read from a saved histogram or `embed` output of the same clustering), summed per group, and the
condition follows: a network conditioned on one cluster takes the group with the most target mass
(or `cluster=`); a soup takes the whole histogram. Each layer's MLP is computed once (no data pass)
and the result is an ordinary dense `train` run of the network's shape (tokenizer, weights,
config.json, eval.json with its costs, `projection.json` saying what it was made from), so
`evaluate`, `export` and `train --init` take it as they take any run.

Costs: the network's pretraining stays generic (paid once for every target); the target's
embedding and the projection (2 x h multiply-adds per MLP weight) are per-target selection; the
parameters stored are the network's, the active ones the small model's.
"""

from __future__ import annotations

import json
import numbers
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .costs import Costs, encoder_flops
from .errors import ConfigError
from .guards import released_on_return
from .io import as_specs
from .io.discovery import absolute_glob

if TYPE_CHECKING:
    from .training import TrainRun

PROJECTION = "projection.json"


@released_on_return
def project(network: str | Path | TrainRun, out_dir: str | Path, *, target: str | Path | list | None = None,
            cluster: int | None = None, text_field: str = "text", overwrite: bool = False):
    """Compute the dense small model of a projected `network` run for a target (or one cluster).

    Args:
        network: an `impsamp train --arch projected` run (its folder or its `TrainRun`).
        target: the in-domain sample (files, folder, glob), an `embed` output of it, or a saved
            histogram (`impsamp.histogram(...).save(path)`) over the network's clustering.
        cluster: a group number instead of a target.
        text_field: the text field of a corpus target.

    Returns the `TrainRun` in `out_dir`.
    """
    import torch

    from .manifest import StageRun, atomic_write_bytes, atomic_write_json
    from .training import TrainRun
    from .training.checkpoint import save_weights
    from .training.result import PAYLOAD, run_config

    t0 = time.perf_counter()
    net = _load_network(network)
    if (target is None) == (cluster is None):
        raise ConfigError("give --target SAMPLE or --cluster ID (one of them)")
    cond_info = json.loads((net.path / "config.json").read_text())["conditioning"]
    if cluster is not None:
        if isinstance(cluster, bool) or not isinstance(cluster, numbers.Integral):
            raise ConfigError(f"--cluster must be a cluster number, got {cluster!r}")
        if not 0 <= cluster < cond_info["groups"]:
            raise ConfigError(f"--cluster {cluster}: {net.path} has clusters 0..{cond_info['groups'] - 1}")
        mass, enc_flops, spec = np.eye(cond_info["groups"])[cluster], 0.0, None
    else:
        mass, enc_flops, spec = _target_mass(target, cond_info, text_field)
    cond, record = _condition(mass, cond_info, cluster)
    mcfg = net.model_config
    small_cfg = replace(net.config, arch="dense", clusters=None, level=None, condition="cluster", basis=None,
                        code_dim=None, codes="learned", init=None)
    source = {"target": spec, "text_field": text_field if spec else None, "cluster": cluster}
    run = StageRun(Path(out_dir), "train", config=asdict(small_cfg), inputs={
        "projected": {"path": str(Path(net.path).resolve()), "fingerprint": net.manifest.fingerprint}, **source},
        overwrite=overwrite).begin()
    out = run.out_dir
    with torch.no_grad():
        small = net.load_model("cpu").project(cond)
    save_weights(small, out / "model.safetensors")
    atomic_write_bytes(out / "tokenizer.json", net.tokenizer_path.read_bytes())
    costs = _costs(net, enc_flops)
    dense = mcfg.dense()
    atomic_write_json(out / "config.json", run_config(  # no steps of its own: computed, not trained
        dense, small_cfg, steps={}, tokenizer=json.loads((net.path / "config.json").read_text())["tokenizer"]))
    record.update(network=str(Path(net.path).resolve()), network_fingerprint=net.manifest.fingerprint, **source,
                  seconds=round(time.perf_counter() - t0, 3))
    atomic_write_json(out / PROJECTION, record)
    metrics = {"costs": costs.to_dict(), "projection": {k: record[k] for k in ("condition", "why")}}
    atomic_write_json(out / "eval.json", metrics)
    (out / "metrics.jsonl").write_text("")
    files = (*PAYLOAD, PROJECTION)
    run.finish(stats=metrics, extra_files={f: out / f for f in files})
    return TrainRun.load(out)


def _costs(net, enc_flops: float) -> Costs:
    """The small model's costs: the network's generic training; embedding the target and projecting."""
    mcfg = net.model_config
    p = mcfg.projection
    proj_flops = 2.0 * p.n_basis * mcfg.n_layer * 3 * mcfg.n_embd * mcfg.mlp_hidden
    trained = Costs.from_dict(net.metrics["costs"])  # its generic work: pretraining, embedding the corpus
    paid = {k: v for k, v in trained.paid.items() if v[0] == "generic"}
    return Costs(generic=trained.generic, selection=enc_flops + proj_flops, paid=paid,
                 inference_flops_per_token=mcfg.flops_per_token() / 3, params_total=mcfg.n_params(),
                 params_active=mcfg.n_active_params())


def _load_network(network):
    from .errors import StageError
    from .training import TrainRun

    try:
        net = network if hasattr(network, "model_config") else TrainRun.load(network)
    except (StageError, FileNotFoundError) as e:
        raise ConfigError(f"{network}: not a finished `impsamp train` run ({e})") from None
    if net.config.arch != "projected":
        raise ConfigError(f"{net.path} is a {net.config.arch!r} run; project a run trained with --arch projected")
    return net


def _target_mass(target, cond_info: dict[str, Any], text_field: str = "text"
                 ) -> tuple[np.ndarray, float, list[str]]:
    """The target's mass per group, the FLOPs of embedding it, and what it was read from."""
    from .clustering import Clusters
    from .histograms import Histogram, is_histogram_file, made_over, target_counts

    recorded = cond_info["clusters"]
    specs = as_specs(target)
    if len(specs) == 1 and is_histogram_file(specs[0]):
        hist = Histogram.load(specs[0])
        if hist.clusters_fingerprint != recorded["fingerprint"] and not made_over(
                hist, Clusters.load(recorded["path"])):  # (the same centroids' bytes, as resample reads it)
            raise ConfigError(f"{specs[0]} is a histogram over another clustering than the network's "
                              f"({recorded['path']}); give the sample itself, or save its histogram over "
                              "that clustering with `impsamp.histogram(sample, clusters).save(path)`")
        counts, flops = hist.counts, 0.0
    else:
        clu = Clusters.load(recorded["path"])
        if clu.manifest.fingerprint != recorded["fingerprint"]:
            raise ConfigError(f"{recorded['path']} has changed since the network was trained on it; "
                              "retrain the network or restore that clustering")
        specs, counts, enc_tokens, enc_params = target_counts(clu, specs, text_field)
        flops = encoder_flops(enc_params, enc_tokens)
    leaf_group = np.asarray(cond_info["leaf_group"], dtype=np.int64)
    if len(counts) != len(leaf_group):
        raise ConfigError(f"the target's histogram has {len(counts)} clusters, the network {len(leaf_group)}")
    mass = np.bincount(leaf_group, weights=np.asarray(counts, dtype=np.float64), minlength=cond_info["groups"])
    if mass.sum() <= 0:
        raise ConfigError(f"no document of the target {', '.join(specs)} was assigned to a cluster")
    return mass / mass.sum(), flops, [absolute_glob(s) for s in specs]  # recorded: not as typed


def _condition(mass: np.ndarray, cond_info: dict[str, Any], cluster: int | None = None
               ) -> tuple[Any, dict[str, Any]]:
    """The network's condition for a target's group mass (one-hot for `cluster`), and the record of why."""
    untrained = set(cond_info.get("untrained_groups", []))
    rec: dict[str, Any] = {"group_mass": [round(float(m), 6) for m in mass]}
    if cond_info["condition"] == "cluster":
        g = int(np.argmax(mass))
        rec.update(condition=g, why=f"--cluster {g}" if cluster is not None else
                   f"cluster {g} holds the most target mass ({mass[g]:.1%})")
        if g in untrained:
            rec["warning"] = f"cluster {g} was too small to train its code"
        return g, rec
    rec.update(condition="histogram", why=f"--cluster {cluster}: a histogram of that cluster alone"
               if cluster is not None else "the target's whole histogram over the network's clusters")
    return mass, rec


def evaluate_projected(network: str | Path | TrainRun, eval_files, *, text_field: str = "text", device: str = "auto",
                       progress: bool = False) -> dict[str, Any]:
    """Routed perplexity of a projected network: each document scored by the small model of its own
    cluster (a soup: of its one-cluster histogram), as `evaluate_routed` scores a mixture of experts."""
    from .clustering import Clusters
    from .mixture.routing import score_routed
    from .training.runtime import resolve_device

    net = _load_network(network)
    info = json.loads((net.path / "config.json").read_text())["conditioning"]
    dev = resolve_device(device)
    shared = net.load_model(dev)
    n = info["groups"]

    def model_of(g: int):
        return shared.project(g if info["condition"] == "cluster" else np.eye(n)[g]).eval(), net

    return score_routed(Clusters.load(info["clusters"]["path"]), np.asarray(info["leaf_group"]), n,
                        net.load_tokenizer(), model_of, eval_files, text_field=text_field, device=dev,
                        routing="nearest leaf cluster's group, its projected small model", progress=progress)


def projected_entry(out: Path, cfg, tcfg, clu, targets: list, evals: list[str], progress: bool, log,
                    condition: str) -> dict[str, Any]:
    """A projected network (`condition` cluster) or a soup of experts (histogram) as a `compare` model:
    trained on the generic corpus for the dense runs' steps and batch (the same generic FLOPs),
    projected for the target, fine-tuned like the dense runs; the report's entry."""
    from . import __version__
    from .errors import StageError
    from .training import TrainRun, train
    from .training.provenance import finished_run

    name = "projected" if condition == "cluster" else "soup"
    ncfg = replace(tcfg, arch="projected", clusters=str(clu.path), condition=condition, finetune_steps=None,
                   pretrain_costs="generic", basis=cfg.basis)
    path = out / name
    try:
        net = TrainRun.load(path)
        if net.config != ncfg or net.manifest.inputs["clusters"]["fingerprint"] != clu.manifest.fingerprint \
                or net.manifest.impsamp_version != __version__:  # (as every other reuse: another version may differ)
            raise StageError("stale")
    except (StageError, FileNotFoundError, KeyError):
        log(progress, f"training the {'projected network' if name == 'projected' else 'soup of experts'}")
        net = train(None, path, ncfg, progress=progress, overwrite=True)
    small_path = out / "runs" / f"{name}-small"
    small = _projected_from(small_path, net, targets, tcfg.text_field)
    if small is None:
        small = project(net, small_path, target=targets, text_field=tcfg.text_field, overwrite=True)
    rec = json.loads((small.path / PROJECTION).read_text())
    ft = replace(tcfg, steps=None, tokenizer=None, finetune_steps=cfg.finetune_steps, init=str(small.path))
    run = finished_run(out / "runs" / name, ft, [], targets, evals)
    if run is None:  # (a finished one is kept: a killed compare resumes without redoing it)
        log(progress, f"fine-tuning the {name} small model")
        run = train(None, out / "runs" / name, ft, finetune=targets, eval=evals, progress=progress, overwrite=True)
    return {"metrics": run.metrics, "costs": run.metrics["costs"],  # (its params_total: the network's)
            "condition": rec["condition"], "group_mass": rec["group_mass"], "why": rec["why"],
            "basis": net.model_config.projection.n_basis}


def _projected_from(path: Path, net, targets: list, text_field: str):
    """The small model in `path` if this version projected it from `net` (by fingerprint) for these targets."""
    from . import __version__
    from .errors import StageError
    from .training import TrainRun

    try:
        small = TrainRun.load(path)
        rec = json.loads((path / PROJECTION).read_text())
    except (StageError, OSError, ValueError):
        return None
    same = (rec.get("network_fingerprint") == net.manifest.fingerprint and rec.get("target") == [absolute_glob(t) for t in as_specs(targets)]
            and rec.get("text_field") == text_field and small.manifest.impsamp_version == __version__)
    return small if same else None
