"""The documentation keeps its promises: a short README whose commands CI runs, and a
benchmarks page generated from every committed result file."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up: two commands\n+```bash\n(.*?)```", text, re.S)
    assert block, "README lost its set-up block"
    cmds = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    tests = re.search(r"The tests.*?```bash\n(.*?)```", text, re.S)
    assert tests, "README lost its test command"
    cmds += [line.split("#")[0].strip() for line in tests.group(1).splitlines() if line.strip()]
    return cmds


def test_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "trojanscope demo" in text
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), f"README links to a missing page {link}"


def test_ci_runs_exactly_the_readme_commands() -> None:
    cmds = _readme_commands()
    assert cmds[0].startswith("python -m pip install") and cmds[1].startswith("trojanscope demo")
    ci = (ROOT / ".ci" / "run").read_text()
    for cmd in cmds:
        head = cmd.split(" --out")[0]  # CI writes the demo into a temporary folder
        assert head in ci, f".ci/run does not run the README's {cmd!r}"
    assert "mkdocs build --strict" in ci


def test_benchmarks_page_covers_every_result_file(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_bench", ROOT / "docs" / "gen_bench.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    (tmp_path / "a.json").write_text(json.dumps(
        {"benchmark": "a", "command": "python bench/a.py --data-dir /abs/data", "created": "now",
         "versions": {"torch": "x"}, "n": 3,
         "results": [{"method": "m", "auc": 0.91234, "params": {"k": 1}}]}))
    (tmp_path / "broken.json").write_text("{")
    page = gen.render(tmp_path)
    assert "## a" in page and "| m | 0.9123 |" in page
    assert "/abs/" not in page  # machine paths are shortened
    assert "broken.json" in page and "unreadable" in page
    real = gen.render()
    for f in sorted((ROOT / "bench" / "results").glob("*.json")):
        assert f"bench/results/{f.name}" in real


def test_readme_speed_table_is_the_benchmark_json() -> None:
    """The README's speed table is ``bench/scan_speed.py --table``: regenerated, never hand-typed."""
    spec = importlib.util.spec_from_file_location("scan_speed_table", ROOT / "bench" / "scan_speed.py")
    assert spec and spec.loader
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    doc = json.loads((ROOT / "bench" / "results" / "scan_speed.json").read_text())
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- speed-table: .*? -->\n(.*?)\n<!-- /speed-table -->", text, re.S)
    assert block, "README lost its speed table"
    assert block.group(1).strip() == mod.table(doc).strip()
    assert "| new |" in block.group(1) and "| v0.1 |" in block.group(1)


def test_readme_paper_table_is_the_benchmark_json() -> None:
    """The README's per-group detection table is ``bench/paper_table.py --table``, never hand-typed."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("paper_table_md", ROOT / "bench" / "paper_table.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    doc = json.loads((ROOT / "bench" / "results" / "paper_table_mnist.json").read_text())
    for page in ("README.md", "docs/methods/index.md"):
        text = (ROOT / page).read_text()
        block = re.search(r"<!-- paper-table: .*? -->\n(.*?)\n<!-- /paper-table -->", text, re.S)
        assert block, f"{page} lost its per-group detection table"
        assert block.group(1).strip() == mod.markdown(doc).strip(), f"{page}: rerun bench/paper_table.py --table"
        assert "| **combined verdict** |" in block.group(1) and "C-0" in block.group(1)
