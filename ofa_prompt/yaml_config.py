"""YAML run configurations -> stock fairseq command lines.

A configuration names the task, data, backbone, architecture and tuning method at the top level, and
passes every other fairseq option through one of three mappings, each `key: value` becoming `--key value`:

    base: [../tasks/caption.yaml, ../methods/prompt.yaml]   # optional: configurations this one extends
    task: caption                      # --task
    data: train.tsv,valid.tsv          # fairseq's positional data argument (OFA-style comma-separated TSVs)
    test_data: test.tsv                # what evaluation reads (default: data)
    arch: ofa_prompt_base              # --arch
    restore_file: ofa_base.pt          # --finetune-from-model (a restarted run resumes from checkpoint_last.pt)
    tuning: prompt                     # --tuning-method
    task_options: {bpe-dir: BPE, selected-cols: 0,4,2}   # given to both fairseq-train and fairseq-generate
    train: {lr: 0.03, encoder-prompt: true}              # fairseq-train only
    generate: {beam: 5, scoring: ofa_caption}            # fairseq-generate only

Values: true -> a bare flag, false or null -> left out, a list -> comma-separated, a mapping -> JSON
(for options such as --eval-args). Keys may use `_` or `-`. `$NAME` or `${NAME}` in a value is the
environment variable NAME (unset is an error). Relative paths inside the values are relative to the
working directory; `base` paths are relative to the file that names them.

    python -m ofa_prompt.yaml_config CONFIG.yaml [key=value ...]                   # fairseq-train command
    python -m ofa_prompt.yaml_config --generate CHECKPOINT CONFIG.yaml [key=value ...]

An override `key=value` (value read as YAML) sets a top-level key, `section.key=value` an option of
that section, and a bare option goes where the configuration already has it, else to `train`
(`generate` with --generate).

Option names are checked before fairseq starts (which takes seconds, then prints its whole usage for a name it
does not know): against fairseq's (fairseq_options.txt, written by `write_fairseq_options`) and the plugin's (read
from the --user-dir's source), with the nearest known name suggested.
"""
import argparse
import ast
import difflib
import functools
import glob
import json
import os
import re
import shlex
import sys
import threading
from typing import Dict, List, Optional

import yaml

from .tuning_methods import TUNING_METHODS

SECTIONS = ("task_options", "train", "generate")
SCALARS = {  # top-level key -> (allowed types, meaning)
    "description": (str, "free text"),
    "task": (str, "--task"),
    "data": (str, "fairseq's data argument"),
    "test_data": (str, "the data fairseq-generate reads"),
    "arch": (str, "--arch"),
    "restore_file": ((str, type(None)), "--finetune-from-model"),
    "tuning": (str, "--tuning-method"),
    "user_dir": (str, "--user-dir (default: the installed ofa_prompt package)"),
}
# Options the top-level keys own; setting them in a section would give fairseq two conflicting values.
OWNED = {"task": "task", "arch": "arch", "user-dir": "user_dir", "finetune-from-model": "restore_file",
         "restore-file": "restore_file", "tuning-method": "tuning", "path": "the CHECKPOINT argument"}
OPTION_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
FAIRSEQ_OPTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fairseq_options.txt")
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


class ConfigError(ValueError):
    pass


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def option_name(key, where: str) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"{where}: option names must be strings, got {key!r}")
    name = key.replace("_", "-")
    if not OPTION_NAME.match(name):
        raise ConfigError(f"{where}.{key}: not a valid option name (letters, digits, '-' or '_')")
    if name in OWNED:
        raise ConfigError(f"{where}.{key}: set it with the top-level key '{OWNED[name]}'")
    return name


def check_value(value, where: str):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return
    if isinstance(value, list) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
        return
    if isinstance(value, dict):
        json.dumps(value)  # anything YAML's safe loader makes from a mapping is JSON-serializable
        return
    raise ConfigError(f"{where}: unsupported value {value!r} (use a scalar, a list of scalars or a mapping)")


def validate(raw: dict, source: str) -> dict:
    """Checks keys and types; returns the configuration with option names normalized to dashes."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a configuration must be a mapping, got {type(raw).__name__}")
    out = {}
    for key, value in raw.items():
        if key == "base":
            continue
        if key in SCALARS:
            types = SCALARS[key][0]
            if not isinstance(value, types):
                raise ConfigError(f"{source}: '{key}' must be {_type_name(types)}, got {value!r}")
            if key == "tuning" and value not in TUNING_METHODS:
                raise ConfigError(f"{source}: 'tuning' must be one of {', '.join(TUNING_METHODS)}, got {value!r}")
            out[key] = value
        elif key in SECTIONS:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{key}' must be a mapping of options, got {value!r}")
            section = {}
            for option, v in value.items():
                name = option_name(option, f"{source}: {key}")
                check_value(v, f"{source}: {key}.{option}")
                section[name] = v
            out[key] = section
        else:
            known = ", ".join(["base", *SCALARS, *SECTIONS])
            raise ConfigError(f"{source}: unknown key '{key}' (known keys: {known})")
    return out


def _fairseq_options() -> set:
    with open(FAIRSEQ_OPTIONS, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip() and not line.startswith("#")}


def _source_options(folder: str) -> set:
    """The option names a plugin's source defines, without importing it (fairseq's import takes seconds): its
    classes' annotated fields (its config dataclasses; other classes' fields only make the check more lenient)
    and the `--names` its add_args pass to add_argument."""
    names = set()
    for path in glob.glob(os.path.join(folder, "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names.update(item.target.id.replace("_", "-") for item in node.body
                             if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name))
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                names.update(arg.value[2:] for arg in node.args
                             if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"))
    return names


_KNOWN_LOCK = threading.Lock()


def known_options(user_dir: str) -> frozenset:
    # one parse at a time: CPython 3.11's compile() fails when threads parse at once ("AST constructor recursion
    # depth mismatch"), and the experiments build their commands from a thread pool
    with _KNOWN_LOCK:
        return _known_options(user_dir)


@functools.lru_cache(maxsize=None)
def _known_options(user_dir: str) -> frozenset:
    return frozenset(_fairseq_options() | _source_options(user_dir))


def check_option(name: str, user_dir: str, where: str):
    """A ConfigError naming the nearest known option (or top-level key) unless `name` is an option of fairseq's
    or of the plugin in `user_dir`."""
    if name in known_options(user_dir):
        return
    keys = {key.replace("_", "-"): key for key in SCALARS}
    match = difflib.get_close_matches(name, [*known_options(user_dir), *keys], n=1)
    hint = ""
    if match:
        key = keys.get(match[0]) or (OWNED.get(match[0]) if OWNED.get(match[0]) in SCALARS else None)
        hint = f"; did you mean the top-level key '{key}'?" if key else f"; did you mean '{match[0]}'?"
    raise ConfigError(f"{where}: '{name}' is not an option of fairseq's or of the plugin's{hint}")


def fairseq_option_names() -> set:
    """Every option name of the installed fairseq's training and generation parsers and of all its registered
    components (tasks, models, criteria, optimizers, schedulers, ...), the plugin's left out. Imports fairseq."""
    from fairseq import options
    from fairseq.dataclass.utils import gen_parser_from_dataclass
    from fairseq.models import MODEL_REGISTRY
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_REGISTRY

    parsers = [options.get_training_parser(), options.get_generation_parser()]
    components = [*TASK_REGISTRY.values(), *MODEL_REGISTRY.values(),
                  *(c for registry in REGISTRIES.values() for c in registry["registry"].values())]
    for component in components:
        if component.__module__.split(".")[0] == __name__.split(".")[0]:
            continue
        parser = argparse.ArgumentParser(conflict_handler="resolve")
        if hasattr(component, "add_args"):
            component.add_args(parser)
        elif getattr(component, "__dataclass", None) is not None:
            gen_parser_from_dataclass(parser, component.__dataclass())
        parsers.append(parser)
    return {name[2:] for parser in parsers for action in parser._actions for name in action.option_strings
            if name.startswith("--")}


def write_fairseq_options(path: str = FAIRSEQ_OPTIONS):
    """Rewrite fairseq_options.txt from the installed fairseq (after upgrading it)."""
    import fairseq

    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# option names of fairseq {fairseq.__version__}: ofa_prompt.yaml_config.write_fairseq_options()\n")
        f.write("".join(f"{name}\n" for name in sorted(fairseq_option_names())))


def merge(parent: dict, child: dict) -> dict:
    merged = dict(parent)
    for key, value in child.items():
        merged[key] = {**parent.get(key, {}), **value} if key in SECTIONS else value
    return merged


def load(path: str, _seen: Optional[List[str]] = None) -> dict:
    """A configuration with its `base` files merged in (later bases and the file itself win)."""
    path = os.path.abspath(path)
    seen = (_seen or []) + [path]
    if path in (_seen or []):
        raise ConfigError(f"{path}: 'base' files form a cycle: {' -> '.join(seen)}")
    if not os.path.isfile(path):
        raise ConfigError(f"configuration file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a configuration must be a mapping, got {type(raw).__name__}")
    bases = raw.get("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'base' must be a file name or a list of file names, got {bases!r}")
    cfg = {}
    for base in bases:
        cfg = merge(cfg, load(os.path.join(os.path.dirname(path), base), seen))
    return merge(cfg, validate(raw, path))


def apply_overrides(cfg: dict, overrides: List[str], default_section: str) -> dict:
    cfg = {**cfg, **{s: dict(cfg.get(s, {})) for s in SECTIONS}}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        if key in SCALARS or key in SECTIONS or key == "base":
            if key in SECTIONS or key == "base":
                raise ConfigError(f"override {item!r}: '{key}' cannot be overridden as a whole; use {key}.OPTION=VALUE")
            cfg.update(validate({key: value}, f"override {item!r}"))
            continue
        section, _, option = key.rpartition(".")
        if section and section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section '{section}' (sections: {', '.join(SECTIONS)})")
        name = option_name(option, f"override {item!r}")
        check_value(value, f"override {item!r}")
        if not section:
            section = "task_options" if name in cfg["task_options"] else default_section
        cfg[section][name] = value
    return cfg


def expand(text: str, where: str) -> str:
    def variable(match):
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise ConfigError(f"{where}: uses ${name}, which is not set in the environment")
        return os.environ[name]

    return VARIABLE.sub(variable, text)


def option_args(options: Dict[str, object], where: str) -> List[str]:
    args = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        if value is True:
            args.append(f"--{name}")
            continue
        if isinstance(value, list):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            text = json.dumps(value, separators=(",", ":"))
        else:
            text = str(value)
        args += [f"--{name}", expand(text, f"{where}: {name}")]
    return args


def default_user_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _value(cfg: dict, key: str, source: str) -> str:
    return expand(cfg[key], f"{source}: {key}")


def _user_dir(cfg: dict, source: str) -> str:
    return _value(cfg, "user_dir", source) if cfg.get("user_dir") else default_user_dir()


def _require(cfg: dict, keys, source: str):
    missing = [k for k in keys if not cfg.get(k)]
    if missing:
        raise ConfigError(f"{source}: missing required key(s): {', '.join(missing)}")


def train_command(cfg: dict, source: str = "configuration") -> List[str]:
    _require(cfg, ("task", "data", "arch"), source)
    args = ["fairseq-train", _value(cfg, "data", source), "--user-dir", _user_dir(cfg, source),
            "--task", cfg["task"], "--arch", cfg["arch"]]
    if cfg.get("restore_file"):
        args += ["--finetune-from-model", _value(cfg, "restore_file", source)]
    if cfg.get("tuning"):
        args += ["--tuning-method", cfg["tuning"]]
    return (args + option_args(cfg.get("task_options", {}), f"{source}: task_options")
            + option_args(cfg.get("train", {}), f"{source}: train"))


def generate_command(cfg: dict, checkpoint: str, source: str = "configuration") -> List[str]:
    _require(cfg, ("task", "data"), source)
    data = _value(cfg, "test_data" if cfg.get("test_data") else "data", source)
    args = ["fairseq-generate", data, "--user-dir", _user_dir(cfg, source), "--task", cfg["task"], "--path", checkpoint]
    return (args + option_args(cfg.get("task_options", {}), f"{source}: task_options")
            + option_args(cfg.get("generate", {}), f"{source}: generate"))


def check_options(cfg: dict, overrides: List[str], mode: str, source: str):
    """The options that reach fairseq-train (`mode` train) or fairseq-generate, each named by the override that set
    it, else by the configuration."""
    set_by = {item.split("=", 1)[0].rpartition(".")[2].replace("_", "-"): item for item in overrides}
    user_dir = _user_dir(cfg, source)
    for section in ("task_options", mode):
        for name in cfg.get(section, {}):
            check_option(name, user_dir, f"override {set_by[name]!r}" if name in set_by else f"{source}: {section}")


def build_command(config_path: str, overrides: List[str] = (), checkpoint: Optional[str] = None) -> List[str]:
    mode = "train" if checkpoint is None else "generate"
    cfg = apply_overrides(load(config_path), list(overrides), mode)
    check_options(cfg, list(overrides), mode, config_path)
    if checkpoint is None:
        return train_command(cfg, config_path)
    return generate_command(cfg, checkpoint, config_path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ofa_prompt.yaml_config", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML configuration")
    parser.add_argument("overrides", nargs="*", help="key=value, section.key=value")
    parser.add_argument("--generate", metavar="CHECKPOINT", help="print the fairseq-generate command for CHECKPOINT")
    args = parser.parse_args(argv)
    try:
        command = build_command(args.config, args.overrides, args.generate)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(shlex.join(command))


if __name__ == "__main__":
    main()
