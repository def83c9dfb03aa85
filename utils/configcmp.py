"""Compare two runs' configs: ``python -m utils.configcmp A B``.

``A`` and ``B`` are ``config_*.json`` files or run folders holding one. Keys
present on one side only are listed (a flag one of the runs did not have yet),
changed values are shown with where each came from (base default, subclass
default, config file, command line), and the run facts (timestamp, versions,
git commit, uncommitted changes) are compared too, a fact recorded on one side
only included. The exit
status is 0 whether or not the configs differ; 2 when a file cannot be read.
"""

import glob
import json
import os
import sys

from base.config.parse import Parser

META_KEYS = ("timestamp", "trainer", "torch", "torchvision", "python", "git_commit", "git_dirty")
# How a run fact that one config does not record is shown (older runs lack newer facts).
ABSENT = "(absent)"


def find_config(path):
    """Return the config JSON path for a file or a run folder.

    Raises:
        FileNotFoundError: nothing named ``path``, or a folder without ``config_*.json``.
    """
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "config_*.json")), key=os.path.getmtime)
        if not found:
            raise FileNotFoundError(f"{path}: no config_*.json in this folder")
        return found[-1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    return path


def load(path):
    """``(values, provenance, meta)`` of a config written by a run, or of a flat JSON dict.

    Raises:
        FileNotFoundError, ValueError: unreadable or not a JSON object.
    """
    with open(find_config(path), encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    if isinstance(doc.get("config"), dict):
        return doc["config"], doc.get("provenance") or {}, doc.get("meta") or {}
    return doc, {}, {}


def compare(a, b):
    """Differences between two ``load`` results.

    Returns:
        dict with ``only_a``/``only_b`` (``{key: value}``), ``changed``
        (``{key: (value_a, value_b)}``), ``origins`` (``{key: (origin_a, origin_b)}``
        for changed keys, ``(origin, None)``/``(None, origin)`` for one-sided ones)
        and ``meta`` (``{key: (value_a, value_b)}`` for differing run facts;
        :data:`ABSENT` for a fact one side does not record).
    """
    (va, pa, ma), (vb, pb, mb) = a, b
    changed = {k: (va[k], vb[k]) for k in sorted(va.keys() & vb.keys()) if va[k] != vb[k]}
    only_a = {k: va[k] for k in sorted(va.keys() - vb.keys())}
    only_b = {k: vb[k] for k in sorted(vb.keys() - va.keys())}
    return {
        "only_a": only_a,
        "only_b": only_b,
        "changed": changed,
        "origins": {
            **{k: (pa.get(k, "?"), pb.get(k, "?")) for k in changed},
            **{k: (pa.get(k, "?"), None) for k in only_a},
            **{k: (None, pb.get(k, "?")) for k in only_b},
        },
        "meta": {
            k: (ma.get(k, ABSENT), mb.get(k, ABSENT)) for k in META_KEYS if (k in ma, ma.get(k)) != (k in mb, mb.get(k))
        },
    }


def format_report(diff, name_a="A", name_b="B"):
    """Human-readable lines for :func:`compare`'s result."""
    lines = [f"A: {name_a}", f"B: {name_b}"]
    for side, key, index in (("A", "only_a", 0), ("B", "only_b", 1)):
        for k, v in diff[key].items():
            origin = diff["origins"].get(k, (None, None))[index]
            lines.append(f"  only in {side}: {k} = {v!r}" + (f" ({origin})" if origin not in (None, "?") else ""))
    for k, (x, y) in diff["changed"].items():
        ox, oy = diff["origins"][k]
        lines.append(f"  changed: {k}: {x!r} ({ox}) -> {y!r} ({oy})")
    for k, (x, y) in diff["meta"].items():
        lines.append(f"  run fact: {k}: {x} -> {y}")
    n = len(diff["only_a"]) + len(diff["only_b"]) + len(diff["changed"])
    lines.append("configs are identical" if n == 0 else f"{n} config key(s) differ")
    return lines


def main(argv=None):
    parser = Parser(prog="python -m utils.configcmp", description=__doc__.split("\n")[0])
    parser.add_argument("a", help="config_*.json or run folder")
    parser.add_argument("b", help="config_*.json or run folder")
    args = parser.parse_args(argv)
    try:
        diff = compare(load(args.a), load(args.b))
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"configcmp: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_report(diff, args.a, args.b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
