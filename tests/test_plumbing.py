"""The scripts share text, not code: the plumbing section and every helper that two scripts both define are the same
text in each, so a diff between two scripts shows only the algorithm. And the scripts stay short."""

import difflib
import re

from conftest import ROOT, existing_scripts

BEGIN, END = "# ==== plumbing: begin", "# ==== plumbing: end ===="
# top-level names that differ between scripts by design: the algorithm and what it runs on
DIFFER_BY_DESIGN = {
    "Args",
    "main",
    "Agent",
    "check_env",
    "check_args",
    "collect_rollout",
    "make_batch",
    "LOSS_STATS",
    "env_action",  # Gaussian: clip to the bounds; Beta: map (0, 1) onto them
    "make_env",
    "make_vector_env",  # the MLP scripts' and the CNN scripts' differ, each pair sharing one text (below)
}
SAME_WITHIN = [("ppo_continuous", "ppo_beta_continuous", "grpo_continuous"), ("ppo_cnn_carracing", "grpo_cnn_carracing")]


def text(script):
    return (ROOT / f"{script}.py").read_text()


def plumbing(script):
    source = text(script)
    assert source.count(BEGIN) == 1 and source.count(END) == 1, f"{script}.py must have exactly one plumbing section"
    return source[source.index(BEGIN) : source.index(END)]


def top_level_definitions(source):
    """{name: text} of every top-level def, class and CONSTANT assignment, with the comment lines just above it."""
    definitions, name, block, comments = {}, None, [], []
    for line in source.splitlines():
        start = re.match(r"(?:def|class) (\w+)|([A-Z_][A-Z0-9_]*) = ", line)
        if start or (line[:1].strip() and not line.startswith(("#", ")", "]", "}"))):
            if name:  # the comments just above a definition belong to it, not to the one before
                definitions[name] = "\n".join(block[: len(block) - len(comments)]).rstrip()
            name, block = (start.group(1) or start.group(2), comments) if start else (None, [])
        comments = comments + [line] if line.startswith("#") else []
        block.append(line)
    if name:
        definitions[name] = "\n".join(block).rstrip()
    return definitions


def test_plumbing_sections_are_byte_identical():
    scripts = existing_scripts()
    reference = plumbing("ppo_continuous")
    for name in ("class UsageError", "def load_checkpoint", "class Run", "def record_video", "def open_run", "def cli"):
        assert name in reference
    for script in scripts:
        assert plumbing(script) == reference, f"{script}.py's plumbing drifted from ppo_continuous.py's"


def test_every_helper_two_scripts_define_is_the_same_text_in_both():
    """Copies are deliberate; drift between copies is the bug."""
    definitions = {script: top_level_definitions(text(script).replace(plumbing(script), "")) for script in existing_scripts()}
    shared = 0
    for name in set().union(*map(set, definitions.values())) - DIFFER_BY_DESIGN:
        copies = {script: defs[name] for script, defs in definitions.items() if name in defs}
        shared += len(copies) > 1
        assert len(set(copies.values())) == 1, f"{name} differs between {sorted(copies)}"
    for group in SAME_WITHIN:
        for name in ("make_env", "make_vector_env"):
            copies = {definitions[s][name] for s in group if s in definitions and name in definitions[s]}
            assert len(copies) <= 1, f"{name} differs within {group}"
    assert shared >= 10  # the test sees the shared helpers (compute_gae, RunningMeanStd, layer_init, update, ...)


def test_every_script_is_a_tyro_main_with_module_level_functions():
    for script in existing_scripts():
        source = text(script)
        assert re.search(r'^if __name__ == "__main__":\n    cli\(main, Args\)\n\Z', source, re.M), script
        assert re.search(r"^def main\(args: Args\):", source, re.M), script


def test_the_scripts_stay_short_and_beta_is_a_small_diff_of_gaussian():
    lines = {script: len(text(script).splitlines()) for script in existing_scripts()}
    assert lines["ppo_continuous"] <= 850, lines
    assert max(lines.values()) <= 950, lines
    diff = difflib.unified_diff(text("ppo_continuous").splitlines(), text("ppo_beta_continuous").splitlines(), n=0)
    changed = [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert len(changed) <= 60, len(changed)
