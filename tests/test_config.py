"""Config plumbing: frozen dataclasses, unknown keys named, defaults < TOML section < flags."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from impsamp.config import from_dict, load_toml, positive, resolve_config, to_dict
from impsamp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    k: int = 1024
    seed: int = 0
    model: str = "all-MiniLM-L6-v2"
    levels: tuple[int, ...] = (64, 16)

    def __post_init__(self):
        positive("k", self.k, flag="--k")


@dataclasses.dataclass(frozen=True)
class NeedsPath:
    out: Path


@pytest.fixture
def toml(tmp_path):
    def write(text: str, name: str = "run.toml") -> Path:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p
    return write


def test_from_dict_builds_the_dataclass():
    assert from_dict(DemoConfig, {"k": 8, "seed": 3}) == DemoConfig(k=8, seed=3)
    assert from_dict(DemoConfig, {}) == DemoConfig()


def test_from_dict_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError) as e:
        from_dict(DemoConfig, {"k": 8, "n_clusters": 4, "sed": 1}, source="run.toml [cluster]")
    msg = str(e.value)
    assert "run.toml [cluster]" in msg
    assert "['n_clusters', 'sed']" in msg
    assert "valid keys: ['k', 'levels', 'model', 'seed']" in msg


def test_from_dict_turns_bad_values_into_config_errors():
    with pytest.raises(ConfigError, match="--k must be > 0, got 0"):
        from_dict(DemoConfig, {"k": 0})
    with pytest.raises(ConfigError, match="config: .*missing 1 required positional argument: 'out'"):
        from_dict(NeedsPath, {})


def test_resolve_config_precedence_defaults_then_toml_then_flags(toml):
    p = toml('[cluster]\nk = 256\nseed = 7\n[embed]\nmodel = "other"\n')
    assert resolve_config(DemoConfig) == DemoConfig()
    assert resolve_config(DemoConfig, p, "cluster") == DemoConfig(k=256, seed=7)
    # a flag beats the file; a flag left at None (not given) does not
    assert resolve_config(DemoConfig, p, "cluster", k=64, seed=None) == DemoConfig(k=64, seed=7)
    assert resolve_config(DemoConfig, None, "cluster", seed=5) == DemoConfig(seed=5)
    # a missing section means defaults; each command reads only its own section
    assert resolve_config(DemoConfig, p, "resample") == DemoConfig()
    assert resolve_config(DemoConfig, p, "embed") == DemoConfig(model="other")


def test_resolve_config_without_a_section_reads_top_level_keys(toml):
    p = toml("k = 32\nlevels = [8, 4, 2]\n")
    cfg = resolve_config(DemoConfig, p)
    assert cfg.k == 32 and list(cfg.levels) == [8, 4, 2]


def test_unknown_key_in_the_toml_names_the_file_and_section(toml):
    p = toml("[cluster]\nkk = 3\n")
    with pytest.raises(ConfigError, match=r"run\.toml \[cluster\]: unknown key\(s\) \['kk'\].*valid keys"):
        resolve_config(DemoConfig, p, "cluster")


@pytest.mark.parametrize("text, command, named", [
    ("train = 5\n", ["train", "--data", "d.jsonl", "--out", "o"], "'train' must be a table"),
    ('experts = "x"\n', ["experts", "e", "c", "--out", "o"], "'experts' must be a table"),
    ("[experts]\ntrain = 5\n", ["experts", "e", "c", "--out", "o"], "'experts.train' must be a table"),
])
def test_train_and_experts_sections_that_are_not_tables_are_one_line(toml, text, command, named):
    """`train` and `experts` read their sections themselves (budget flags replace the file's other budget):
    a section that is not a table is the same one-line error as the other commands give, not a traceback."""
    from click.testing import CliRunner
    from impsamp_cli.main import cli

    r = CliRunner().invoke(cli, [*command, "--config", str(toml(text))])
    assert r.exit_code == 1 and named in r.output and "Traceback" not in r.output, r.output


def test_a_bad_value_in_the_toml_is_a_config_error(toml):
    p = toml("[cluster]\nk = -1\n")
    with pytest.raises(ConfigError, match=rf"^{p} \[cluster\]: k must be > 0, got -1$"):  # where the value is
        resolve_config(DemoConfig, p, "cluster")
    with pytest.raises(ConfigError, match="^--k must be > 0, got -2$"):  # a flag's value: the flag
        resolve_config(DemoConfig, p, "cluster", k=-2)


def test_an_unknown_flag_is_a_programming_error(toml):
    with pytest.raises(TypeError, match=r"\['bogus'\] are not fields of DemoConfig"):
        resolve_config(DemoConfig, None, "cluster", bogus=1)


@pytest.mark.parametrize("text, needle", [
    ("[cluster\nk = 3\n", "not valid TOML"),
    ("k = \n", "not valid TOML"),
    ("[cluster]\nk = 1\nk = 2\n", "not valid TOML"),
])
def test_bad_toml_names_the_file(toml, text, needle):
    p = toml(text, name="broken.toml")
    with pytest.raises(ConfigError, match=needle) as e:
        resolve_config(DemoConfig, p, "cluster")
    assert str(p) in str(e.value)


def test_unreadable_config_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found"):
        load_toml(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml: not valid TOML"):
        load_toml(tmp_path / "latin1.toml")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match=r"dir\.toml: cannot read the config file"):
        load_toml(tmp_path / "dir.toml")


def test_toml_is_read_as_utf8(toml):
    p = toml('[embed]\nmodel = "modèle-😀"\n')
    assert resolve_config(DemoConfig, p, "embed").model == "modèle-😀"


def test_a_section_that_is_not_a_table_is_a_config_error(toml):
    p = toml("cluster = 3\n")
    with pytest.raises(ConfigError, match=r"run\.toml: 'cluster' must be a table"):
        resolve_config(DemoConfig, p, "cluster")


def test_to_dict_is_plain_json_data():
    d = to_dict(DemoConfig(levels=(4, 2)))
    assert d == {"k": 1024, "seed": 0, "model": "all-MiniLM-L6-v2", "levels": [4, 2]}
    assert json.loads(json.dumps(d)) == d  # what a manifest gives back compares equal
    assert to_dict(NeedsPath(Path("runs/x"))) == {"out": "runs/x"}
    assert from_dict(DemoConfig, to_dict(DemoConfig(k=5))).k == 5


def test_positive():
    positive("k", 1)
    positive("k", None)
    positive("k", 0, allow_zero=True)
    with pytest.raises(ConfigError, match="k must be > 0, got 0"):
        positive("k", 0)
    with pytest.raises(ConfigError, match="--temp must be >= 0, got -0.5"):
        positive("temp", -0.5, flag="--temp", allow_zero=True)


def test_a_misspelt_section_or_a_value_of_the_wrong_type_is_named(toml):
    p = toml("[clustr]\nk = 3\n")
    with pytest.raises(ConfigError, match=r"run\.toml: unknown section\(s\) \[clustr\]; impsamp reads \[embed\]"):
        resolve_config(DemoConfig, p, "cluster")
    with pytest.raises(ConfigError, match=r"\[cluster\]: k = 'lots' is a string; expected an integer"):
        resolve_config(DemoConfig, toml('[cluster]\nk = "lots"\n'), "cluster")
    with pytest.raises(ConfigError, match=r"\[cluster\]: seed = \[1\] is a list; expected an integer"):
        resolve_config(DemoConfig, toml("[cluster]\nseed = [1]\n"), "cluster")
    k = resolve_config(DemoConfig, toml("[cluster]\nk = 2e3\n"), "cluster").k
    assert k == 2000 and isinstance(k, int)  # an integer written as 2e3 is one


def test_a_value_the_config_class_parses_is_left_to_it(toml):
    from impsamp.clustering import ClusterConfig

    assert resolve_config(ClusterConfig, toml('[cluster]\nlevels = "4,4"\n'), "cluster").levels == (4, 4)


@pytest.mark.parametrize("command", [["resample", "e", "c", "--target", "t.jsonl", "--out", "o"],
                                     ["compare", "--generic", "g.jsonl", "--target", "t.jsonl", "--eval", "v.jsonl",
                                      "--out", "o"]])
def test_selection_budgets_may_be_written_as_floats_as_in_toml(command):
    """`--tokens 5e7` is a count on every command (TOML takes 5e7 too); 2.5 and `lots` are not."""
    from click.testing import CliRunner
    from impsamp_cli.main import cli

    for value, ok in (("5e7", True), ("2.5", False), ("lots", False)):
        r = CliRunner().invoke(cli, [*command, "--tokens", value])
        assert r.exit_code != 0 and ("--tokens" in r.output) != ok, (value, r.output)


def test_a_budget_flag_replaces_the_config_files_budget(toml):
    """`[resample] tokens = ...` in the file and `--docs` on the command line: the flag's budget, not "give
    exactly one budget" (train: `--tokens` over the file's `steps`, as before)."""
    from impsamp.resampling import ResampleConfig
    from impsamp.training import TrainConfig

    p = toml("[resample]\ntokens = 50000\nseed = 3\n[train]\nsteps = 100\nlr = 0.002\n")
    cfg = resolve_config(ResampleConfig, p, "resample", docs=100)
    assert (cfg.tokens, cfg.docs, cfg.seed) == (None, 100, 3)
    assert resolve_config(ResampleConfig, p, "resample").tokens == 50000
    t = resolve_config(TrainConfig, p, "train", tokens=1000)
    assert (t.steps, t.tokens, t.lr) == (None, 1000, 0.002)
    from impsamp.config import without_replaced  # `impsamp experts` reads its nested section itself, the same rule
    from impsamp.mixture import ExpertsConfig

    section = {"total_tokens": 10**6, "groups": 4}
    assert without_replaced(ExpertsConfig, section, {"tokens_per_expert": 500}) == {"groups": 4}
    assert without_replaced(ExpertsConfig, section, {"seed": 1}) == section


def test_k_and_levels_are_alternatives_in_a_config_file(toml):
    """`[cluster]` with both k and levels was accepted and k silently ignored (the flags refuse the pair); a flag
    of the pair replaces the file's other, as a budget flag does."""
    from impsamp.clustering import ClusterConfig

    both = toml("[cluster]\nk = 4\nlevels = [2, 4]\n")
    with pytest.raises(ConfigError, match=r"\[cluster\]: k and levels cannot be combined"):
        resolve_config(ClusterConfig, both, "cluster")
    assert resolve_config(ClusterConfig, both, "cluster", levels=(2, 2)).branching == (2, 2)
    assert resolve_config(ClusterConfig, both, "cluster", k=3).branching == (3,)
    assert resolve_config(ClusterConfig, toml("[cluster]\nlevels = [2, 4]\n"), "cluster", k=3).branching == (3,)


def test_a_vocab_size_the_experts_tokenizer_makes_moot_is_refused():
    """`[experts] tokenizer` given: the train settings' vocab_size sized nothing (now dropped from every expert's
    run, which uses the shared tokenizer), so it is refused, as `train --tokenizer --vocab-size` is."""
    from impsamp.mixture import ExpertsConfig

    with pytest.raises(ConfigError, match="vocab_size sizes the tokenizer the experts train; --tokenizer tok.json"):
        ExpertsConfig(tokenizer="tok.json", train={"vocab_size": 300})
    assert ExpertsConfig(train={"vocab_size": 300}).train_config(100, "shared.json").vocab_size is None
