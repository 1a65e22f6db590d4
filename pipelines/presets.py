"""Presets: named overlays of params.yaml, applied key by key.

A preset (presets/<name>.yaml) holds only the keys it changes. Applying it rewrites those keys
in params.yaml in place (comments kept), so DVC still sees per-stage params: switching the
data sources reruns download and what follows, while a preset that only touches `tokenizer`
reruns only the tokenizer. Mappings merge recursively; lists (like data.sources) are replaced.

    python -m pipelines.presets list
    python -m pipelines.presets show minimind-3
    python -m pipelines.presets apply minimind-3 gpu   # in order, then: dvc repro

Several presets compose: each overlays the result of the ones before it, and the params are
validated after every step, so no preset leaves a params.yaml that fails validation. A family
preset (minimind-3, minimind-3v, ...) sets data, model and recipe; a machine preset (gpu)
sets only precision/compilation/devices, so the two touch different keys. A preset may start
with `extends: <name>` (or a list): those are applied first, so minimind-3v is minimind-3's
text recipe plus the vision keys, without repeating them.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def available(presets_dir: Path = PRESETS_DIR) -> dict[str, Path]:
    return {p.stem: p for p in sorted(presets_dir.glob("*.yaml"))}


def _merge(target: Any, overlay: dict[str, Any]) -> None:
    """Deep-merge overlay into a ruamel mapping in place (keeps target's comments/order)."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def apply_presets(names: list[str], params_path: Path, presets_dir: Path = PRESETS_DIR) -> None:
    """Overlay presets `names` in order onto params_path, validating after each one; the
    file is written (atomically) only when every step validated."""
    from ruamel.yaml import YAML

    from pipelines.atomic import write_text
    from pipelines.params import validate_params

    presets = available(presets_dir)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    params = yaml.load(params_path.read_text(encoding="utf-8"))
    applied: list[str] = []
    for name in names:
        for step, overlay in _chain(name, presets):
            _merge(params, overlay)
            applied.append(step)
        validate_params(_plain(params), origin=f"{params_path} with preset(s) "
                        f"{' + '.join(applied)}")
    buffer = io.StringIO()
    yaml.dump(params, buffer)
    write_text(params_path, buffer.getvalue())


def _chain(name: str, presets: dict[str, Path], seen: tuple[str, ...] = ()
           ) -> list[tuple[str, dict[str, Any]]]:
    """(name, overlay) of `name` and of what it extends, the extended ones first."""
    from ruamel.yaml import YAML

    if name not in presets:
        raise SystemExit(f"unknown preset {name!r}; available: {', '.join(presets) or 'none'}")
    if name in seen:
        raise SystemExit(f"preset {name!r} extends itself: {' -> '.join((*seen, name))}")
    overlay = YAML(typ="safe").load(presets[name].read_text(encoding="utf-8")) or {}
    parents = overlay.pop("extends", [])
    chain: list[tuple[str, dict[str, Any]]] = []
    for parent in [parents] if isinstance(parents, str) else parents:
        chain += _chain(parent, presets, (*seen, name))
    return [*chain, (name, overlay)]


def _plain(node: Any) -> Any:
    """ruamel's commented containers -> plain dicts/lists for validation."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.presets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the presets")
    show = sub.add_parser("show", help="print a preset")
    show.add_argument("name")
    apply = sub.add_parser("apply", help="apply presets to params.yaml, in the order given")
    apply.add_argument("names", nargs="+", metavar="name")
    apply.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    presets = available()
    if args.command == "list":
        for name, path in presets.items():
            first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
            print(f"{name:20s} {first}")
    elif args.command == "show":
        if args.name not in presets:
            sys.exit(f"unknown preset {args.name!r}; available: {', '.join(presets)}")
        print(presets[args.name].read_text(encoding="utf-8"), end="")
    else:
        apply_presets(args.names, args.params)
        print(f"applied preset(s) {' + '.join(args.names)} to {args.params}; now run: dvc repro")


if __name__ == "__main__":
    main()
