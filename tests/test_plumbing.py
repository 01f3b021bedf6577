"""The plumbing section is the same text in every training script, so a diff between two scripts
shows only the algorithm (STYLE.md)."""

import re

from conftest import ROOT, existing_scripts

BEGIN, END = "# ==== plumbing: begin", "# ==== plumbing: end ===="


def plumbing(script):
    text = (ROOT / f"{script}.py").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{script}.py must have exactly one plumbing section"
    return text[text.index(BEGIN):text.index(END)]


def test_plumbing_sections_are_byte_identical():
    scripts = existing_scripts()
    assert "ppo_continuous" in scripts
    reference = plumbing("ppo_continuous")
    for name in ("class UsageError", "def atomic_write_json", "class Recorder", "def record_video", "def open_run"):
        assert name in reference
    for script in scripts:
        assert plumbing(script) == reference, f"{script}.py's plumbing drifted from ppo_continuous.py's"


def test_every_script_is_a_tyro_main_with_module_level_functions():
    for script in existing_scripts():
        text = (ROOT / f"{script}.py").read_text()
        assert re.search(r'^if __name__ == "__main__":\n    cli\(main, Args\)\n\Z', text, re.M), script
        assert re.search(r"^def main\(args: Args\):", text, re.M), script


SHARED_HELPERS = ("available_cores", "envpool_threads", "check_envpool_env", "layer_init")


def top_level_definition(text, name):
    match = re.search(rf"^(def|class) {name}\b.*?(?=^\S)", text, re.M | re.S)
    return match.group(0) if match else None


def test_helpers_outside_the_plumbing_are_the_same_text_wherever_a_script_has_them():
    """Copies are deliberate; drift between copies is the bug (STYLE.md)."""
    for name in SHARED_HELPERS:
        copies = {script: top_level_definition((ROOT / f"{script}.py").read_text(), name) for script in existing_scripts()}
        copies = {script: text for script, text in copies.items() if text}
        assert len(copies) >= 2, name
        assert len(set(copies.values())) == 1, f"{name} differs between {sorted(copies)}"
