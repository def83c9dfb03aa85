"""``--config`` files (JSON or YAML) in, ``--print_config`` YAML out.

A file is either flat, ``{flag: value}``, or a run's saved layout
``{"config": {flag: value}, "provenance": ..., "meta": {...}}`` (see
:func:`base.run.folder.write_config`), in JSON or, for a ``.yaml``/``.yml``
name, YAML. YAML scalars are read as the strings they are written as (only
``null``/``~``/empty and ``.inf``/``.nan`` are resolved), so
:func:`base.config.parse.parse_config` types them with each flag's argparse
``type`` exactly as it types a command-line string: ``lr: 1e-3`` is 0.001
(YAML 1.1 would leave it a string), ``proj_name: yes`` stays ``"yes"``
(not ``True``), ``seed: 010`` is 10 (not octal 8) and a date stays text.
PyYAML is imported only when a YAML file is read or a config printed.
"""

import argparse
import json
import os
import re

from base.errors import ConfigError

YAML_SUFFIXES = (".yaml", ".yml")
_PLAIN_TYPES = (str, int, float, bool, type(None), list, dict)


def read_config_file(path, with_meta=False):
    """Read a ``--config`` file: JSON, or YAML for a ``.yaml``/``.yml`` name.

    Returns:
        dict of flag values (YAML scalars as strings, see the module
        docstring); with ``with_meta``, ``(values, meta)`` where ``meta`` is
        the run's ``meta`` mapping (``{}`` for a flat file); ``meta["trainer"]``
        names the trainer class that wrote it.

    Raises:
        ConfigError: the file is missing, a folder, not JSON/YAML, empty (YAML),
            not an object/mapping; a key given twice in one object/mapping (JSON and
            YAML would keep the last silently); a run's layout whose ``config`` or ``meta`` is
            not one (or ``meta.trainer`` not a string); a YAML value of a type
            JSON lacks (``!!timestamp``, ``!!binary``, ``!!set``). The message
            is one line naming the file (and the key).
    """
    where = f"--config {path}"
    yaml_file = path.lower().endswith(YAML_SUFFIXES)
    kind = "YAML mapping" if yaml_file else "JSON object"
    if os.path.isdir(path):
        raise ConfigError(f"{where}: is a folder; expected a config file (a run's config_*.json, or a .yaml)")
    try:
        with open(path, encoding="utf-8") as f:
            data = _load_yaml(f.read(), where) if yaml_file else json.load(f, object_pairs_hook=_unique(where))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: not valid {'YAML' if yaml_file else 'JSON'} ({exc})") from None
    if data is None and yaml_file:
        raise ConfigError(f"{where}: the file is empty; expected a {kind} of flag values")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a {kind} of flag values, got a {type(data).__name__}")
    meta = {}
    # A run's file: its flags are under "config"; anything else is read as flat flags
    # (a flat file may hold the launch-only "config" flag itself, a path or null).
    if "config" in data and not isinstance(data["config"], (str, type(None))):
        if not isinstance(data["config"], dict):
            raise ConfigError(
                f"{where}: its 'config' entry is a {type(data['config']).__name__}, expected an object of flag values"
            )
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise ConfigError(f"{where}: its 'meta' entry is a {type(meta).__name__}, expected an object")
        if not isinstance(meta.get("trainer", ""), str):
            raise ConfigError(f"{where}: its 'meta.trainer' is {meta['trainer']!r}, expected a class name")
        data = data["config"]
    for key, value in data.items():
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, _PLAIN_TYPES):  # only explicit YAML tags get here
                raise ConfigError(
                    f"{where}: bad value for {key!r}: a YAML {type(item).__name__} ({item!r}); write it as plain text"
                )
    return (data, meta) if with_meta else data


def _unique(where):
    """A ``json`` ``object_pairs_hook`` building a dict, refusing a key given twice (``json`` keeps the last).

    Raises:
        ConfigError: one line naming ``where`` and the key.
    """

    def pairs_to_dict(pairs):
        data = {}
        for key, value in pairs:
            if key in data:
                raise ConfigError(f"{where}: key {key!r} is given twice; keep one")
            data[key] = value
        return data

    return pairs_to_dict


def _load_yaml(text, where):
    """``text`` parsed as one YAML document by :func:`_loader` (``None`` if empty).

    Raises:
        ConfigError: PyYAML is missing, or the text is not YAML (one line: the problem and its line/column).
    """
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{where}: reading YAML needs PyYAML (pip install 'PyYAML>=6.0')") from None
    try:
        return yaml.load(text, Loader=_loader(yaml, where))  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        if problem and mark:  # str(exc) spans lines and quotes the text; one line: what, and where
            what = ", ".join(part for part in (getattr(exc, "context", None), problem) if part)
            detail = f"{what} at line {mark.line + 1}, column {mark.column + 1}"
        else:
            detail = " ".join(str(exc).split())
        raise ConfigError(f"{where}: not valid YAML ({detail})") from None


def _loader(yaml, where):
    """A ``yaml.SafeLoader`` that resolves only null, merge keys (``<<``) and ``.inf``/``.nan``.

    Every other plain scalar (``on``, ``1e-3``, ``010``, ``2024-01-01``) stays
    a string for the flag's ``type`` to convert; explicit tags (``!!float``) still apply.
    A key written twice in one mapping raises ``ConfigError`` naming ``where``, the
    key and both lines (PyYAML keeps the last silently); a key after a merge
    (``<<: *base``) overrides the merged one, as YAML means it to.
    """

    class FlagLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                lines = {}  # key -> the line it was first given on
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                    try:
                        if key in lines:
                            raise ConfigError(
                                f"{where}: key {key!r} is given twice (lines {lines[key]} and {line}); keep one"
                            )
                        lines[key] = line
                    except TypeError:  # an unhashable key: SafeLoader's own error names it
                        continue
            return super().construct_mapping(node, deep)

    keep = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")
    FlagLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag in keep]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    infinity_or_nan = re.compile(r"^(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
    FlagLoader.add_implicit_resolver("tag:yaml.org,2002:float", infinity_or_nan, list("-+."))
    return FlagLoader


def format_config(args, provenance, prog):
    """The resolved config as YAML, one ``flag: value  # source`` line per flag (what ``--print_config`` prints).

    Saved as a ``.yaml`` it can be passed back with ``--config``: values are
    written by PyYAML's safe dumper (strings that read as numbers, booleans or
    null are quoted; floats keep a ``.``, e.g. ``1.0e-05``), tuples as lists,
    other objects as their ``str``.

    Raises:
        ConfigError: PyYAML is missing.
    """
    try:
        import yaml
    except ImportError:
        raise ConfigError("--print_config needs PyYAML (pip install 'PyYAML>=6.0')") from None
    lines = [
        f"# {prog}: resolved config, each value's source after '#'. Saved as a .yaml it can be passed back "
        f"with --config (launch-only flags such as config, resume and debug are not read from a file)."
    ]
    for flag, value in vars(args).items():
        value = list(value) if isinstance(value, tuple) else value
        if not isinstance(value, _PLAIN_TYPES):
            value = str(value)
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True)
        text = text.removesuffix("\n...\n").strip()
        if "\n" in text:  # a string with line breaks: a JSON string is a valid one-line YAML one
            text = json.dumps(value)
        lines.append(f"{flag}: {text}  # {provenance.get(flag, 'command line')}")
    return "\n".join(lines) + "\n"


def add_print_config(parser):
    """Add ``--print_config`` beside ``--config``, if ``parser`` has one (trainers do; evaluators do not).

    Its default is ``SUPPRESS``: the flag is in a namespace only when given, and
    :func:`base.config.parse.parse_config` takes it out, so no run records it.
    """
    config = next((a for a in parser._actions if a.dest == "config"), None)
    if config is None:
        return
    group = next((g for g in parser._action_groups if config in g._group_actions), parser)
    group.add_argument(
        "--print_config",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the resolved config as YAML, each value's source in a comment, and exit "
        "(save it as a .yaml to pass back with --config)",
    )
    group._group_actions.insert(group._group_actions.index(config) + 1, group._group_actions.pop())  # in --help
