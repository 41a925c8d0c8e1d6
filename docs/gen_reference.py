"""Generate the registry reference page: every registered entry of every kind, from the registry.

A MkDocs hook (``hooks: [docs/gen_reference.py]``): ``on_files`` adds ``reference.md``, which
lists, per registry kind, each name with its class or function rendered by mkdocstrings from
the docstring (paper, equations, ``Args:``). It enumerates ``trojanscope.available(kind)`` at
build time, so a method appears here the day it is registered and a renamed parameter cannot
stay documented under its old name.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

TITLES = {
    "model_detector": "Model detectors (`trojanscope scan --method NAME`)",
    "input_detector": "Input detectors (`trojanscope inputs --method NAME`)",
    "mitigation": "Mitigations (`trojanscope mitigate --method NAME`)",
    "trigger": "Triggers (`--attack NAME`)",
    "evasion": "Evasion attacks",
    "arch": "Architectures (`--arch NAME`)",
    "dataset": "Datasets (`--data NAME`)",
    "format": "Model file formats",
}


def render() -> str:
    """The page: one section per registry kind, one mkdocstrings block per entry."""
    # the checkout's own package, the one mkdocstrings reads (``paths: [src]``), even when
    # another copy is installed
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    import trojanscope as ts
    from trojanscope._registry import _PROVIDERS

    lines = [
        "# Registry reference",
        "",
        "Everything registered, by kind, generated from the registry and the docstrings when the",
        "site is built. `trojanscope.create(KIND, NAME, **params)` builds an entry; on the command",
        "line `--set NAME.PARAM=VALUE` sets a parameter. The [methods](methods/index.md) pages",
        "explain when to use which and what they measured.",
        "",
    ]
    kinds = [k for k in TITLES if k in _PROVIDERS] + sorted(k for k in _PROVIDERS if k not in TITLES)
    for kind in kinds:
        lines += [f"## {TITLES.get(kind, kind)}", ""]
        lines += ["| name | implemented by |", "|---|---|"]
        entries = [(name, ts.get(kind, name)) for name in ts.available(kind)]
        for name, obj in entries:
            lines.append(f"| `{name}` | `{obj.__module__}.{obj.__qualname__}` |")
        lines.append("")
        seen: set[str] = set()
        for name, obj in entries:
            path = f"{obj.__module__}.{obj.__qualname__}"
            if path in seen:  # one object under two names (e.g. bim / ifgsm)
                continue
            seen.add(path)
            lines += [
                f"### `{name}`",
                "",
                f"::: {path}",
                "    options:",
                "      show_root_heading: false",
                "      show_root_toc_entry: false",
                "      members: false",
                "      show_bases: true",
                "",
            ]
    return "\n".join(lines) + "\n"


def on_files(files: Any, config: Any) -> Any:
    """Add the generated ``reference.md`` to the site."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference.md", content=render()))
    return files


if __name__ == "__main__":
    print(render())
