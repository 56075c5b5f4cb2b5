"""`impsamp info PATH`: what a corpus or a stage directory is, with its counts."""

from __future__ import annotations

import json
from pathlib import Path

import click

from impsamp.io import corpus_summary, open_corpus
from impsamp.manifest import MANIFEST, describe_dir, read_manifest, verify_outputs
from impsamp.outdir import RUN_RECORD, complete_manifest, is_stage_dir, read_json_dict

from .app import cli


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--text-field", default="text", show_default=True, help="Field holding the document text.")
@click.option("--id-field", default=None, help="Field holding a document id [default: 'id' if present].")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict",
              show_default=True, help="What to do with invalid UTF-8.")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@click.option("--verify", is_flag=True,
              help="For a stage directory: check every output file against the sha256 its manifest records "
                   "(reads them all; without it only their sizes are checked).")
def info(paths, text_field, id_field, encoding_errors, as_json, verify):
    """Describe a corpus (files, globs, folders) or an impsamp stage directory.

    \b
    Examples:
      impsamp info data/generic/*.jsonl.gz
      impsamp info runs/emb
    """
    first = Path(paths[0])
    if len(paths) == 1 and first.is_dir() and _is_stage_dir(first):
        _describe_stage_dir(first, as_json, verify)
        return
    if verify:
        raise click.UsageError("--verify checks a stage directory's files; give one stage directory")
    if len(paths) == 1 and (_describe_histogram(first, as_json) or _describe_other_output(first, as_json)):
        return
    corpus = open_corpus(list(paths), text_field=text_field, id_field=id_field, encoding_errors=encoding_errors)
    s = corpus_summary(corpus)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"corpus: {s['files']} file(s) ({', '.join(s['formats'])}), {s['bytes']:,} bytes")
    click.echo(f"  documents: {s['documents']:,} (of {s['rows']:,} rows; {s['skipped_empty']:,} empty skipped)")
    click.echo(f"  characters: {s['characters']:,} (mean {s['characters'] / max(s['documents'], 1):,.0f} per document)")
    if s["documents"] == 0:
        click.echo(f"  warning: no documents: all {s['rows']:,} rows are empty or whitespace; "
                   "check --text-field")
    if s["distinct_ids"] < s["documents"]:
        click.echo(f"  warning: {s['documents'] - s['distinct_ids']:,} documents repeat an earlier document's id "
                   f"({s['distinct_ids']:,} distinct); a selection keeps each row's source_file and source_row "
                   "beside its id")
    if s["replaced_utf8"]:
        click.echo(f"  rows with invalid UTF-8 replaced: {s['replaced_utf8']:,}")
    for path, names in list(s["fields"].items())[:5]:
        click.echo(f"  fields of {Path(path).name}: {', '.join(names) or '(none: no row to read them from)'}")
    if len(s["fields"]) > 5:
        click.echo(f"  ... and {len(s['fields']) - 5} more file(s)")


def _describe_stage_dir(first: Path, as_json: bool, verify: bool) -> None:
    """What a stage directory holds (its manifest), its files checked against their sha256 with `verify`."""
    if not (first / MANIFEST).exists():  # interrupted, or being written: where it stands is the answer, not an error
        if verify:
            raise click.ClickException(f"{first} {describe_dir(first)}; --verify checks a complete output's files")
        where = describe_dir(first)
        record = read_json_dict(first / RUN_RECORD) or {}
        facts = {"path": str(first), "complete": False, "stage": record.get("stage"), "status": where}
        click.echo(json.dumps(facts, indent=2) if as_json else f"{first} {where}")
        return
    m = read_manifest(first)
    inside = _verified(first, m) if verify else []
    facts = {"path": str(first), "complete": True, "stage": m.stage, "config": m.config, "stats": m.stats,
             "inputs": {k: _short_input(v) for k, v in m.inputs.items()},
             "outputs": len(m.outputs), "bytes": sum(o.bytes for o in m.outputs),
             "created_at": m.created_at, "impsamp_version": m.impsamp_version}
    if verify:
        facts["verified"] = [str(first), *map(str, inside)]
    if as_json:
        click.echo(json.dumps(facts, indent=2, default=str))
        return
    click.echo(f"{first}: complete '{m.stage}' output ({facts['outputs']} files, {facts['bytes']:,} bytes), "
               f"made {m.created_at} by impsamp {m.impsamp_version}")
    if verify:
        click.echo(f"verified: all {facts['outputs']} files match their sha256"
                   + (f", and those of the {len(inside)} stage outputs inside it" if inside else ""))
    for key in ("config", "stats", "inputs"):
        click.echo(f"{key}:")
        for k, v in facts[key].items():
            skip = (key == "stats" and k == "costs") or (  # shown below; a tree's unused flat k
                key == "config" and m.stage == "cluster" and k == "k" and m.config.get("levels"))
            if not skip:
                click.echo(f"  {k}: {_fmt(v)}")
    if isinstance(m.stats.get("costs"), dict):
        from impsamp.costs import Costs, describe

        click.echo("costs (FLOPs):")
        for line in describe(Costs.from_dict(m.stats["costs"])):
            click.echo(f"  {line}")


def _verified(folder: Path, m) -> list[Path]:
    """Check `folder`'s files and those of the complete stage outputs inside it (a compare's selections and
    runs) against their sha256; the outputs inside, checked."""
    verify_outputs(folder, m)
    inside = sorted(p.parent for p in folder.rglob(MANIFEST) if p.parent != folder
                    and not any(part.startswith(("_", ".")) for part in p.parent.relative_to(folder).parts)
                    and complete_manifest(p.parent) is not None)
    for sub in inside:
        verify_outputs(sub, read_manifest(sub))
    return inside


def _is_stage_dir(path: Path) -> bool:
    """An impsamp stage directory (complete or interrupted), not a folder that happens to hold a
    manifest.json of another tool; an output whose `--overwrite` replacement stopped counts too."""
    if is_stage_dir(path):
        return True
    if not (path / MANIFEST).is_file():
        return False
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return True  # a damaged manifest: read_manifest says so
    return isinstance(m, dict) and {"stage", "impsamp_version"} <= set(m)  # another tool's may say "stage" too


def _short_input(v):
    if isinstance(v, dict):
        return {k: v[k] for k in ("path", "stage", "fingerprint") if k in v} or v
    return v


def _fmt(v) -> str:
    text = json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
    return text if len(text) <= 160 else text[:157] + "..."


def _describe_other_output(path: Path, as_json: bool) -> bool:
    """A file or folder impsamp writes that is no corpus and no stage directory: a selection's histograms.json,
    an `impsamp export` folder. False for anything else."""
    from impsamp.training.exporting import MARKER

    if path.is_file() and path.name == "histograms.json" and (complete_manifest(path.parent) or {}).get(
            "stage") == "resample":
        h = json.loads(path.read_text())
        facts = {"path": str(path), "of_selection": str(path.parent), "clusters": len(h["generic"]),
                 **{k: float(sum(h[k])) for k in ("target", "generic", "selected")}}
        said = (f"{path}: the cluster histograms of the selection {path.parent} over {facts['clusters']:,} clusters: "
                f"target {facts['target']:,.0f}, generic {facts['generic']:,.0f}, selected {facts['selected']:,.0f} "
                f"units; `impsamp info {path.parent}` describes the selection")
    elif path.is_dir() and (path / MARKER).is_file():
        facts = {"path": str(path), "export_of": json.loads((path / MARKER).read_text())}
        said = (f"{path}: a transformers export of {facts['export_of'].get('run')} ({facts['export_of'].get('weights')}, "
                f"impsamp {facts['export_of'].get('impsamp_version')}): "
                "AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained read it")
    else:
        return False
    click.echo(json.dumps(facts, indent=2) if as_json else said)
    return True


def _describe_histogram(path: Path, as_json: bool) -> bool:
    """A saved target histogram (`impsamp histogram`): its counts' facts. False for anything else."""
    from impsamp.histograms import Histogram, describe, is_histogram_file

    if not is_histogram_file(path):
        return False
    hist = Histogram.load(path)
    facts = {"path": str(path), "histogram_of": hist.source, "clusters_fingerprint": hist.clusters_fingerprint,
             **describe(hist)}
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        click.echo(f"{path}: saved histogram of {hist.source or 'a target'}: {facts['documents']:,.0f} documents "
                   f"over {facts['clusters']:,} clusters (top cluster {facts['top_cluster_mass']:.1%}, "
                   f"{facts['empty_clusters']:,} empty); clustering {hist.clusters_fingerprint[:19]}")
    return True

