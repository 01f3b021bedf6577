"""Experiments as files: `--config FILE` for every training script, and the grids of `benchmark.sh --grid`.

A config file (YAML, TOML or JSON) holds a script's Args fields by name. Each value becomes the flag a user would
type, and those flags go before the command line's own: tyro parses both alike, and the flags given win. A run's
metrics.json is a config file too (its `args`, less how that run was invoked: --resume, --config, --eval-checkpoint).
Loading a file never runs code from it (yaml.safe_load, tomllib, json).

`python config.py grid SCRIPT... -- KEY=V1,V2 ...` checks a grid against every script and prints its runs, one line
each: the name suffix, then the flags, tab-separated (what benchmark.sh reads). tune.py checks its search space here.
"""

import contextlib
import difflib
import importlib
import io
import itertools
import json
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import tyro
import yaml

T = TypeVar("T")
# how a run was invoked, not what it computes: not read from a run's metrics.json
INVOCATION = ("config", "resume", "eval_checkpoint", "video_path", "export")
# set by benchmark.sh for each run: a grid over them is refused
SET_BY_BENCHMARK = ("env_id", "seed", "total_timesteps", "group_size", "exp_name", "runs_dir", "resume", "config")


class UsageError(Exception):
    """A mistake the user can fix; reported as one line, exit status 2, nothing written."""


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """write(temporary path), then rename: a reader, or a kill -9, never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def flag(name: str) -> str:
    """An Args field's flag: learning_rate -> --learning-rate."""
    return "--" + name.replace("_", "-")


def tyro_message(stderr: str) -> str:
    """tyro's multi-line error box, as one line."""
    box = [line.strip("│╭╮╰╯ ") for line in stderr.splitlines()[1:]]
    body = " ".join(" ".join(itertools.takewhile(lambda line: not line.startswith("─"), box)).split())
    return body or " ".join(stderr.split())


def parse_flags(args_type: type[T], argv: list[str]) -> T:
    """The Args that tyro makes of `argv`, or a UsageError with tyro's message in one line."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(io.StringIO()):
            return tyro.cli(args_type, args=argv)
    except SystemExit:
        raise UsageError(tyro_message(captured.getvalue())) from None


def read_file(path: str) -> dict[str, Any]:
    """The key: value pairs of a YAML, TOML or JSON file (a run's metrics.json: its args)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise UsageError(f"--config {path}: unknown format {suffix or '(no suffix)'!r}: name it .yaml, .yml, .toml or .json")
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {path}: cannot read it ({type(e).__name__}): pass a readable file") from None
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise UsageError(f"--config {path}: not valid {suffix[1:].upper()}: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: holds a {type(data).__name__}, not key: value pairs (the flags' names)")
    if isinstance(data.get("args"), dict) and "algo" in data:  # a run's metrics.json
        return {k: v for k, v in data["args"].items() if k not in INVOCATION}
    return data


def field_kind(args_type: type, name: str) -> tuple[Any, bool]:
    """An Args field's type, and whether it may be None: Optional[float] -> (float, True)."""
    kind = typing.get_type_hints(args_type)[name]
    optional = typing.get_origin(kind) in (Union, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    return kind, optional


def value_flags(args_type: type, key: str, value: object, where: str) -> list[str]:
    """The flags that set field `key` to `value` (a value read from a file), checked against the field's type."""
    names = {f.name for f in fields(args_type)}
    name = key.replace("-", "_")
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f": did you mean {close[0]!r}?" if close else " (see --help)"
        raise UsageError(f"{where}: unknown key {key!r}: there is no {flag(name)}{hint}")
    kind, optional = field_kind(args_type, name)
    origin = typing.get_origin(kind)

    def wrong(expected: str) -> UsageError:
        return UsageError(f"{where}: key {key!r} takes {expected}, got {value!r}")

    if value is None:
        if not optional:
            raise wrong("a value (it has no None)")
        return [flag(name), "None"]
    if kind is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return [flag(name) if value else "--no-" + name.replace("_", "-")]
    if origin is tuple:  # tuple[int, ...] (hidden_sizes), tuple[float, ...], tuple[str, ...]
        items, item = value if isinstance(value, list) else [value], typing.get_args(kind)[0]
        accepted = (int, float) if item is float else (item,)
        if not items or not all(isinstance(v, accepted) and not isinstance(v, bool) for v in items):
            raise wrong(f"a list of {item.__name__}s, e.g. [64, 64]" if item is int else f"a list of {item.__name__}s")
        return [flag(name), *map(str, items)]
    if isinstance(value, (list, dict, bool)):
        raise wrong("one value" if kind is not float else "a number")
    if origin is Literal and value not in typing.get_args(kind):
        raise wrong("one of " + ", ".join(map(repr, typing.get_args(kind))))
    if kind is int and not isinstance(value, int):
        raise wrong("an integer")
    if kind is float and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            float(value)
        except ValueError:
            raise wrong("a number") from None
    return [f"{flag(name)}={value}"]


def flags_from_file(args_type: type, path: str) -> list[str]:
    """The flags a config file stands for."""
    tokens = []
    for key, value in read_file(path).items():
        if key == "config":
            raise UsageError(f"--config {path}: a config file cannot name another (key 'config'): merge them into one")
        tokens += value_flags(args_type, str(key), value, f"--config {path}")
    try:
        parse_flags(args_type, tokens)  # what the checks above let through, tyro catches
    except UsageError as e:
        raise UsageError(f"--config {path}: {e}") from None
    return tokens


def config_flags(args_type: type, argv: list[str]) -> list[str]:
    """The flags of the --config file named in `argv` (the last one given), to go before `argv`; [] without one."""
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 == len(argv) or argv[i + 1].startswith("--"):
                raise UsageError("--config needs a file: --config FILE (YAML, TOML or JSON)")
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.removeprefix("--config=")
    return [] if path is None or path == "None" else flags_from_file(args_type, path)


def config_record(path: str | None) -> dict[str, str] | None:
    """What metrics.json keeps of a run's --config: its path and its text (the file may change or go)."""
    return None if path is None else {"path": path, "text": Path(path).read_text()}


# ---- grids: benchmark.sh --grid KEY=V1,V2 ----


def split_values(values: str) -> list[str]:
    """`1e-4,3e-4` -> ['1e-4', '3e-4']; commas inside brackets stay: `[64,64],[256,256]`."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(values + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(values[start:i].strip())
            start = i + 1
    return parts


def name_part(value: str) -> str:
    """A grid value as it goes into run names: `[64, 64]` -> 64x64."""
    value = re.sub(r"[\s,]+", "x", value.strip("[] "))
    return re.sub(r"[^A-Za-z0-9.+-]", "-", value)


def grid_runs(scripts: list[str], grids: list[str]) -> list[tuple[str, list[str]]]:
    """The runs of a grid: (exp name suffix, flags) for each combination, checked against every script's Args."""
    axes: list[list[tuple[str, str, Any]]] = []
    for spec in grids:
        key, eq, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key or not values.strip():
            raise UsageError(f"--grid {spec!r}: write it as KEY=VALUE1,VALUE2 (e.g. learning_rate=1e-4,3e-4)")
        if key in SET_BY_BENCHMARK:
            raise UsageError(f"--grid {key}: benchmark.sh sets {flag(key)} itself; use its own option (see --help)")
        if key in [axis[0][0] for axis in axes]:
            raise UsageError(f"--grid {key} is given twice: list all its values in one --grid")
        values_list = split_values(values)
        if len(set(values_list)) < len(values_list) or "" in values_list:
            raise UsageError(f"--grid {spec!r}: a value is empty or repeated")
        axes.append([(key, v, yaml.safe_load(v)) for v in values_list])
    arg_types = [importlib.import_module(Path(script).stem).Args for script in scripts]
    for script, args_type in zip(scripts, arg_types):
        for key, text, value in itertools.chain.from_iterable(axes):
            where = f"--grid {key}={text} ({Path(script).stem}.py)"
            tokens = value_flags(args_type, key, value, where)
            try:
                parse_flags(args_type, tokens)
            except UsageError as e:
                raise UsageError(f"{where}: {e}") from None
    runs = []
    for combo in itertools.product(*axes):
        suffix = "".join(f"_{key}={name_part(text)}" for key, text, _ in combo)
        tokens = [token for key, _, value in combo for token in value_flags(arg_types[0], key, value, "--grid")]
        runs.append((suffix, tokens))
    return runs


def main(argv: list[str]) -> None:
    """`python config.py grid SCRIPT... -- KEY=V1,V2 ...`: the grid's runs, one per line (suffix TAB flags...)."""
    if len(argv) < 1 or argv[0] != "grid" or "--" not in argv:
        raise UsageError("usage: python config.py grid SCRIPT... -- KEY=V1,V2 ...")
    cut = argv.index("--")
    scripts, grids = argv[1:cut], argv[cut + 1 :]
    if not scripts or not grids:
        raise UsageError("usage: python config.py grid SCRIPT... -- KEY=V1,V2 ...")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for suffix, tokens in grid_runs(scripts, grids):
        print("\t".join([suffix, *tokens]))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
