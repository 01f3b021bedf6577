"""The README is for users: short, its commands real, and every number in its results and speed tables read from a
committed file under docs/ (pasted from plot.py's or speed.py's output, never typed)."""

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def generated_sections():
    return re.findall(r"<!-- results:(\w+) -->\n(.*?)<!-- /results:\1 -->", README, re.S)


def test_the_readme_is_short_and_its_test_command_is_the_one_ci_runs():
    assert len(README.splitlines()) <= 300
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]  # CI's last line runs the tests
    assert command.startswith("python -m pytest") and command in README


def test_every_table_row_and_picture_in_the_generated_sections_comes_from_a_file_under_docs():
    docs = {p: p.read_text() for p in (ROOT / "docs").rglob("*.md")}
    for name, section in generated_sections():
        for line in section.splitlines():
            if line.startswith("|") and not line.startswith("|---"):
                assert any(line in text for text in docs.values()), f"README results:{name}: {line!r} is in no docs/*.md"
            for path in re.findall(r"\]\((docs/[^)]+)\)", line):
                assert (ROOT / path).exists(), path
        source = re.search(r"(?i)from\s+\[?`?(docs/[^\s`\]]+)", section)
        assert source and (ROOT / source.group(1)).exists(), f"README results:{name} must name the file it comes from"


def test_every_link_to_a_file_exists():
    for path in re.findall(r"\]\(((?!http)[^)#]+)\)", README):
        assert (ROOT / path).exists(), path
