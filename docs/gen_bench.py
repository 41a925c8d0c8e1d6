"""Generate the Benchmarks page from ``bench/results/*.json`` so that it cannot go stale.

Used two ways:

* as a MkDocs hook (``hooks: [docs/gen_bench.py]`` in ``mkdocs.yml``): ``on_files`` adds
  ``benchmarks.md``, rendered from the JSON files at build time, and the figures under
  ``bench/results/`` to the site, so that pages can show them as ``../bench/results/NAME.png``;
* as a script: ``python docs/gen_bench.py`` prints the page (``--out FILE`` writes it).

The renderer is generic: every result file gets its command, date, thread count and library
versions, its scalar settings, and one table per nested result (a dict of dicts or a list of
dicts becomes rows, nested fields become dotted columns). A new benchmark appears here the day
its JSON is committed; nothing in this file names a particular benchmark.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
META = {"benchmark", "command", "created", "torch_threads", "versions"}
MAX_COLUMNS = 12
MAX_ROWS = 40
MAX_LIST = 10

INTRO = """# Benchmarks

The `bench/` scripts reproduce the papers' numbers on real data and write JSON, with the
command that made it, the library versions and the time, under `bench/results/`. They take
`--data-dir` (default `$TROJANSCOPE_DATA`, else `../shared/data`) and `--quick` for a smoke run
(its results go to `*_quick.json`); trained models are cached under `bench/cache/` (resumable; two
scripts never train the same model twice). Run long ones under `nice`, one torch thread.

**This page is generated** from `bench/results/*.json` by `docs/gen_bench.py` each time the site
is built: every number below is read from the file named in its heading. Most results were made
on a 2-core machine shared with other jobs, so their seconds are pessimistic; ratios are measured
side by side within one run. The method pages explain what each benchmark shows.
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        if len(v) > MAX_LIST or any(isinstance(e, (dict, list)) for e in v):
            return f"[{len(v)} values]"
        return ", ".join(_fmt(e) for e in v)
    if isinstance(v, dict):
        return f"{{{len(v)} fields}}"
    s = str(v).replace("|", "\\|").replace("\n", " ")
    if s.startswith("/"):  # an absolute path of the machine that ran it says nothing here
        s = Path(s).name
    return s if len(s) <= 80 else s[:77] + "..."


def _command(cmd: Any) -> str:
    """The command as recorded, with absolute paths of the machine that ran it shortened."""
    words = [f".../{Path(w).name}" if w.startswith("/") else w for w in str(cmd).split()]
    return " ".join(words).replace("|", "\\|")


def _flatten(d: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 2:
            out.update(_flatten(v, key + ".", depth + 1))
        elif isinstance(v, dict):
            continue
        else:
            out[key] = v
    return out


def _is_scalar(v: Any) -> bool:
    return not isinstance(v, (dict, list)) or (
        isinstance(v, list) and len(v) <= MAX_LIST and not any(isinstance(e, (dict, list)) for e in v)
    )


def _table(rows: list[tuple[str, dict[str, Any]]], first: str) -> list[str]:
    flat = [(name, _flatten(r)) for name, r in rows[:MAX_ROWS]]
    columns: list[str] = []
    for _, r in flat:
        for k, v in r.items():
            if k not in columns and _is_scalar(v) and not k.startswith("params."):
                columns.append(k)
    hidden = max(0, len(columns) - MAX_COLUMNS)
    columns = columns[:MAX_COLUMNS]
    if not columns:
        return []
    out = ["| " + " | ".join([first, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, r in flat:
        out.append("| " + " | ".join([_fmt(name), *(_fmt(r.get(c)) for c in columns)]) + " |")
    notes = []
    if len(rows) > MAX_ROWS:
        notes.append(f"{len(rows) - MAX_ROWS} more rows")
    if hidden:
        notes.append(f"{hidden} more columns")
    if notes:
        out += ["", f"*({', '.join(notes)} in the JSON.)*"]
    return out


def _block(key: str, value: Any) -> list[str]:
    """Markdown for one top-level entry that is not a scalar."""
    if isinstance(value, list) and value and all(isinstance(e, dict) for e in value):
        rows = [(str(i), e) for i, e in enumerate(value)]
    elif isinstance(value, dict) and value and all(isinstance(e, dict) for e in value.values()):
        rows = [(str(k), e) for k, e in value.items()]
    elif isinstance(value, dict) and value:
        flat = _flatten(value)
        lines = ["| field | value |", "|---|---|"]
        lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in flat.items() if _is_scalar(v)]
        return [f"**{key}**", "", *lines] if len(lines) > 2 else []
    else:
        return [f"**{key}**: {_fmt(value)}"] if value not in (None, [], {}) else []
    table = _table(rows, "")
    return [f"**{key}**", "", *table] if table else []


def render_file(path: Path) -> str:
    """Markdown section for one ``bench/results/*.json`` file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"## `{path.name}`\n\nunreadable: {e}\n"
    if not isinstance(data, dict):
        return f"## `{path.name}`\n\nnot a JSON object\n"
    name = data.get("benchmark", path.stem)
    versions = data.get("versions") or {}
    lines = [f"## {name}", "", f"Source: `bench/results/{path.name}`", ""]
    meta = [
        ("command", f"`{_command(data['command'])}`" if data.get("command") else "–"),
        ("created", _fmt(data.get("created"))),
        ("torch threads", _fmt(data.get("torch_threads"))),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform") or "–"),
    ]
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in meta)]
    scalars = [(k, v) for k, v in data.items() if k not in META and _is_scalar(v)]
    if scalars:
        lines += ["", "| setting | value |", "|---|---|"]
        lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in scalars]
    for k, v in data.items():
        if k in META or _is_scalar(v):
            continue
        block = _block(k, v)
        if block:
            lines += ["", *block]
    return "\n".join(lines) + "\n"


def render(results: Path = RESULTS) -> str:
    """The whole Benchmarks page: the introduction, an index, then one section per file."""
    files = sorted(results.glob("*.json"))
    full = [p for p in files if not p.stem.endswith("_quick")]
    quick = [p for p in files if p.stem.endswith("_quick")]
    parts = [INTRO, "| result file | script |", "|---|---|"]
    for p in files:
        try:
            cmd = _command(json.loads(p.read_text()).get("command", ""))
        except (OSError, ValueError, AttributeError):
            cmd = ""
        parts.append(f"| `{p.name}` | `{cmd}` |")
    parts.append("")
    parts += [render_file(p) for p in full]
    if quick:
        parts.append("## Smoke runs\n\nThe sections below come from `--quick` runs: small and fast, for checking the scripts, not for\nquoting.\n")
        parts += [render_file(p) for p in quick]
    figures = sorted(results.glob("*.png"))
    if figures:
        parts.append("## Figures\n")
        parts += [f"![{p.stem}](bench/results/{p.name})\n" for p in figures]
    return "\n".join(parts)


# --- MkDocs hook -------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    """Add the generated ``benchmarks.md`` and the benchmark figures to the site."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "benchmarks.md", content=render()))
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"bench/results/{png.name}", abs_src_path=str(png)))
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the page here instead of printing it")
    args = ap.parse_args()
    text = render()
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
