"""The Python API used wrongly the way users do: one-line impsamp errors, nothing left that looks complete."""

from __future__ import annotations

import json

import numpy as np
import pytest

import impsamp
from impsamp import ClusterConfig, EmbedConfig, ResampleConfig
from impsamp.errors import ConfigError, StageError, WeightingError
from impsamp.outdir import MANIFEST

from ._helpers import build_pipeline


@pytest.fixture(scope="module")
def p(tmp_path_factory):
    return build_pipeline(tmp_path_factory.mktemp("api"))


@pytest.mark.parametrize("make, message", [
    (lambda: EmbedConfig(windows="no"), "windows = 'no' is a string; expected true or false"),
    (lambda: ClusterConfig(spherical=1), "spherical = 1 is an integer; expected true or false"),
    (lambda: ResampleConfig(tokens=True), "tokens = True is a flag; expected an integer"),
    (lambda: ResampleConfig(tokens="5000"), "tokens = '5000' is a string"),
    (lambda: ResampleConfig(tokens=2.5), "tokens = 2.5 is not an integer"),
    (lambda: ResampleConfig(docs=10, rows_per_shard="10"), "rows_per_shard = '10' is a string"),
    (lambda: EmbedConfig(text_field=None), "text_field = None must be given; expected a string"),
])
def test_a_config_field_of_the_wrong_type_is_named(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_training_config_fields_are_checked_before_any_work():
    from impsamp.training import TrainConfig

    with pytest.raises(ConfigError, match="steps = 2.5 is not an integer"):
        TrainConfig(steps=2.5)
    with pytest.raises(ConfigError, match="compile = 'no' is a string; expected true or false"):
        TrainConfig(compile="no")
    with pytest.raises(ConfigError, match=r"\[experts.train\]: unknown key\(s\) \['stepz'\]"):
        impsamp.ExpertsConfig(groups=2, total_tokens=2000, train={"stepz": 3})


def test_an_integral_float_is_an_integer():
    assert ResampleConfig(tokens=5e7).tokens == 50_000_000 and isinstance(ResampleConfig(tokens=5e7).tokens, int)
    assert ClusterConfig(k=8.0).k == 8


def test_resample_takes_one_target_path_and_a_dict_config_and_refuses_no_budget(p, tmp_path):
    sel = impsamp.resample(p["emb"], p["clu"], tmp_path / "a", targets=p["target"], config={"docs": 50})
    again = impsamp.resample(p["emb"], p["clu"], tmp_path / "b", targets=[str(p["target"])],
                             config=ResampleConfig(docs=50))
    assert sel.data_files[0].read_bytes() == again.data_files[0].read_bytes()
    assert repr(sel).startswith(f"Selection({str(tmp_path / 'a')!r}, rows=50,")
    with pytest.raises(ConfigError, match="give a budget"):
        impsamp.resample(p["emb"], p["clu"], tmp_path / "c", targets=[p["target"]])
    with pytest.raises(ConfigError, match="config must be a ResampleConfig .* got int"):
        impsamp.resample(p["emb"], p["clu"], tmp_path / "c", targets=[p["target"]], config=5)
    with pytest.raises(ConfigError, match="the weight 'a' is not a number"):
        impsamp.resample(p["emb"], p["clu"], tmp_path / "c", targets=[(p["target"], "a")], config={"docs": 5})
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("tokens, message", [
    (1, "--tokens 1 selects no document"),
    (10**9, r"--tokens 1,000,000,000 is [\d,]+ times the [\d,]+ tokens of the clusters the target weighs"),
])
def test_a_budget_that_selects_nothing_or_repeats_absurdly_is_refused_and_leaves_nothing(p, tmp_path, tokens,
                                                                                          message):
    out = tmp_path / "sel"
    with pytest.raises(ConfigError, match=message):
        impsamp.resample(p["emb"], p["clu"], out, targets=[p["target"]], config=ResampleConfig(tokens=tokens))
    assert not (out / MANIFEST).exists() and not (out.exists() and any(out.iterdir()))


def test_a_histogram_refuses_embeddings_the_clustering_was_not_made_from(p, tmp_path):
    other = tmp_path / "other"
    impsamp.embed(p["generic"], other, EmbedConfig(model="hashing:64", max_tokens=32))
    with pytest.raises(StageError, match="was not clustered from"):
        impsamp.histogram(p["target"], p["clu"], embeddings=other)
    hist = impsamp.histogram(p["target"], p["clu"])
    with pytest.raises(ConfigError, match="is a folder; give the histogram a file path"):
        hist.save(tmp_path)
    with pytest.raises(ConfigError, match="h.hist: give a path ending in .json"):  # --target would not know it
        hist.save(tmp_path / "h.hist")
    assert not (tmp_path / "h.hist").exists()


def test_histograms_compare_by_value_and_reload_from_relative_paths(p, tmp_path, monkeypatch):
    """`==` on two histograms raised numpy's "truth value is ambiguous", and `hash` a TypeError; a handle
    opened from a relative path broke after `os.chdir`, calling good output damaged."""
    a, b = impsamp.histogram(p["target"], p["clu"]), impsamp.histogram(p["target"], p["clu"])
    assert a == b and hash(a) == hash(b) and a in [b] and len({a, b}) == 1
    generic = impsamp.generic_histogram(impsamp.Clusters.load(p["clu"]))
    assert a != generic and a != "a histogram"
    monkeypatch.chdir(p["root"])
    emb, clu = impsamp.Embeddings.load("emb"), impsamp.Clusters.load("clu")
    monkeypatch.chdir(tmp_path)
    assert len(emb.shard_vectors(emb.shard_names[0])) > 0 and impsamp.histogram(p["target"], clu) == a
    # the handle `resample` returns too (it kept the path as typed: its data files were then not found)
    other = tmp_path / "other.jsonl"
    other.write_text(p["target"].read_text())
    sel = impsamp.resample(emb, clu, "sel-rel", targets=[(p["target"], 0.7), (other, 0.3)], config={"docs": 20})
    monkeypatch.chdir(p["root"])
    assert sel.path.is_absolute() and sel.to_table().num_rows == 20
    card = (sel.path / "README.md").read_text()  # a mixture's card names each part's weight
    assert f"in-domain sample {p['target'].name}:0.7, other.jsonl:0.3" in card


@pytest.mark.parametrize("kw, message", [({"cap": -1}, "cap must be > 0"), ({"temperature": float("nan")},
                                         "temperature must be a finite number"), ({"smoothing": -1}, "smoothing must be >= 0")])
def test_density_ratio_checks_its_settings(p, kw, message):
    hist = impsamp.histogram(p["target"], p["clu"])
    with pytest.raises(ConfigError, match=message):
        impsamp.density_ratio(hist, impsamp.generic_histogram(impsamp.Clusters.load(p["clu"])), **kw)


def test_complex_weights_are_refused(p, tmp_path):
    with pytest.raises(WeightingError, match="not numbers"):
        impsamp.resample(p["emb"], p["clu"], tmp_path / "w", targets=[p["target"]], config={"docs": 20},
                         weighting=lambda t, g: np.ones(t.k, dtype=complex))


@pytest.mark.parametrize("method", ["uniform", "ngram", "classifier"])
def test_a_weighting_function_for_a_method_without_cluster_weights_is_refused(p, tmp_path, method):
    """As `--weighting` is: the function would never be called, the selection would not be what was asked."""
    called = []
    with pytest.raises(ConfigError, match=f"--method {method} has none: leave it out"):
        impsamp.resample(p["emb"], p["clu"], tmp_path / "w", targets=[p["target"]],
                         config={"docs": 20, "method": method}, weighting=lambda t, g: called.append(1))
    assert not called and not (tmp_path / "w").exists()


def test_density_ratio_by_default_gives_the_weights_resample_draws_with(p, tmp_path):
    """`impsamp.density_ratio(...)` is how the README says to check weights: its defaults are resample's."""
    sel = impsamp.resample(p["emb"], p["clu"], tmp_path / "s", targets=[p["target"]],
                           config={"docs": 20, "within": "uniform"})
    hist = impsamp.histogram(p["target"], p["clu"])
    w = impsamp.density_ratio(hist, impsamp.generic_histogram(impsamp.Clusters.load(p["clu"])))
    recorded = json.loads((sel.path / "histograms.json").read_text())["weights"]
    np.testing.assert_allclose(w, recorded, rtol=1e-6)


@pytest.mark.parametrize("kw, message", [({"seed": -1}, "--seed must be an integer from 0 to 4294967295"),
                                         ({"per_cluster": "8"}, r"--sample \(per_cluster\) must be an integer >= 1"),
                                         ({"per_cluster": 0}, r"--sample \(per_cluster\) must be an integer >= 1")])
def test_inspect_checks_its_settings(p, tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        impsamp.inspect(p["clu"], tmp_path / "x.html", **kw)
    assert not (tmp_path / "x.html").exists()


def test_the_lazy_names_are_listed_for_completion():
    assert {"embed", "cluster", "resample", "Selection", "generic_histogram"} <= set(dir(impsamp))


def test_help_on_a_config_class_says_what_each_field_means():
    from impsamp.training import TrainConfig

    doc = ResampleConfig.__doc__
    assert doc.startswith("How to draw a selection") and "\n    tokens: Budget in tokens of the text written" in doc
    assert "\n    within_top: " in doc and "\n    seed: " in doc
    assert "\n    steps: " in TrainConfig.__doc__ and "\n    spherical: Cosine geometry" in ClusterConfig.__doc__


def test_something_that_is_not_a_path_is_named_not_a_type_error(p, tmp_path):
    from impsamp.errors import CorpusError

    with pytest.raises(StageError, match=r"expected the folder of an `impsamp embed` output, got None"):
        impsamp.cluster(None, tmp_path / "c")
    with pytest.raises(StageError, match=r"`impsamp resample` output, got 5"):
        impsamp.Selection.load(5)
    with pytest.raises(CorpusError, match="expected a corpus path .* got 123"):
        impsamp.embed(123, tmp_path / "e", EmbedConfig(model="hashing:64"))
    with pytest.raises(ConfigError, match="give the .html file to write, got None"):
        impsamp.inspect(p["clu"], None)
    assert not (tmp_path / "c").exists() and not (tmp_path / "e").exists()


def test_numpy_scalars_and_paths_become_plain_values():
    from pathlib import Path

    from impsamp.training import TrainConfig

    cfg = ResampleConfig(docs=np.int64(50), temperature=np.float32(0.5), cap=3)
    assert (type(cfg.docs), type(cfg.temperature), type(cfg.cap)) == (int, float, float)
    assert ClusterConfig(spherical=np.True_).spherical is True
    assert TrainConfig(tokenizer=Path("tok.json")).tokenizer == "tok.json"
    with pytest.raises(ConfigError, match="must be a table of TrainConfig fields, got 3"):
        impsamp.ExpertsConfig(groups=2, train=3)
    assert "ngram-\n" not in ResampleConfig.__doc__ and "ngram-classifier" in ResampleConfig.__doc__


def test_one_path_weight_pair_is_one_target_and_verbose_is_not_recorded(p, tmp_path):
    from impsamp.resampling.stage import command_line

    sel = impsamp.resample(p["emb"], p["clu"], tmp_path / "a", targets=(p["target"], 1.0), config={"docs": np.int64(20)})
    assert sel.stats["rows"] == 20
    assert command_line(["-v", "resample", "E", "C", "--verbose"]) == "impsamp resample E C"


def test_selection_diagnostics_mean_what_they_say_for_every_method(p, tmp_path):
    """KL(target || selection) is the histograms' own, whatever the budget (a cluster the selection misses is
    floored once, not by a pseudo-count that grows with the rows); an effective sample size is given only for
    the methods that draw by cluster weights."""
    from impsamp.histograms import kl

    for method, docs in (("uniform", 5), ("uniform", 40), ("ngram", 20), ("importance", 20)):
        sel = impsamp.resample(p["emb"], p["clu"], tmp_path / f"{method}-{docs}", targets=[p["target"]],
                               config={"docs": docs, "method": method})
        h = json.loads((sel.path / "histograms.json").read_text())
        assert sel.stats["kl_target_selected"] == pytest.approx(kl(h["target"], h["selected"]), rel=1e-12)
        assert (sel.stats["effective_sample_size"] is None) == (method == "ngram")
    assert "effective sample size | - |" in (tmp_path / "ngram-20" / "README.md").read_text()


def test_a_target_folder_is_an_embed_output_only_if_impsamp_says_so(p, tmp_path):
    """A folder holding another tool's manifest.json is a corpus folder, not an embedded target; when that
    file is not data, the error says how to leave it out. A finished `resample` output is a corpus of its
    selected text, as a target too."""
    folder = tmp_path / "tgt"
    folder.mkdir()
    (folder / "part-0.jsonl").write_bytes(p["target"].read_bytes())
    (folder / "manifest.json").write_text('{"files": ["part-0.jsonl"], "source": "crawler"}\n')
    with pytest.raises(impsamp.errors.CorpusError) as e:
        impsamp.histogram(folder, p["clu"])
    assert "manifest.json" in str(e.value) and f"'{folder / '*.jsonl'}'" in str(e.value)
    assert "embed" not in str(e.value)
    hist = impsamp.histogram(str(folder / "*.jsonl"), p["clu"])
    assert hist.counts.tolist() == impsamp.histogram(p["target"], p["clu"]).counts.tolist()
    sel = impsamp.resample(p["emb"], p["clu"], tmp_path / "sel", targets=[p["target"]], config={"docs": 30})
    assert impsamp.histogram(sel.path, p["clu"]).total == 30  # its 30 rows, read as a corpus
