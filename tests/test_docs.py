"""The README stays true: its commands exist, its test command is what CI runs, cards are complete."""

from __future__ import annotations

import re
from pathlib import Path

from impsamp_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README, "the README's test command must be the one .ci/run runs"
    assert "pip install torch==2.13.0" in ci


def test_readme_shows_the_demo_command():
    assert re.search(r"pip install torch==2\.13\.0 && pip install -e '\.\[all\]' && impsamp demo", README)


def test_every_command_has_help_and_is_in_the_readme():
    for name, cmd in cli.commands.items():
        assert cmd.help, f"`impsamp {name}` has no help text"
        assert f"impsamp {name}" in README, f"`impsamp {name}` is not mentioned in README.md"


def test_data_cards_have_front_matter():
    for card in (ROOT / "data_cards").glob("*.md"):
        text = card.read_text()
        assert text.startswith("---\n"), card
        head = text.split("---")[1]
        keys = {line.split(":", 1)[0] for line in head.splitlines() if ":" in line and not line.startswith(" ")}
        assert {"name", "description", "license"} <= keys, (card, keys)
