"""The public API (``trojanscope.__all__``) is documented: every name has a docstring, every
public function documents exactly its parameters, and the modules that define the names pass
ruff's docstring rules (D, Google convention; D417 is replaced by the parameter check here,
which understands this code base's ``a, b: ...`` entries)."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from _docstrings import documented_params, signature_params

import trojanscope

PUBLIC = [n for n in trojanscope.__all__ if n != "__version__"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_documented(name: str) -> None:
    obj = getattr(trojanscope, name)
    doc = obj.__doc__ or ""
    assert doc.strip(), f"trojanscope.{name} has no docstring"
    if inspect.isclass(obj) and obj.__doc__ == obj.__mro__[1].__doc__:
        pytest.fail(f"trojanscope.{name} only inherits its docstring")


@pytest.mark.parametrize("name", [n for n in PUBLIC if inspect.isfunction(getattr(trojanscope, n))])
def test_public_function_documents_its_parameters(name: str) -> None:
    fn = getattr(trojanscope, name)
    params = signature_params(fn)
    if not params:
        return
    documented = documented_params(fn)
    assert documented is not None, f"trojanscope.{name} has no Args: section"
    assert not params - documented, f"trojanscope.{name}: undocumented {sorted(params - documented)}"
    assert not documented - params, f"trojanscope.{name}: documents unknown {sorted(documented - params)}"


def _defining_files() -> list[str]:
    files = {Path(trojanscope.__file__).resolve()}
    for name in PUBLIC:
        src = inspect.getsourcefile(getattr(trojanscope, name))
        if src:
            files.add(Path(src).resolve())
    return sorted(str(f) for f in files)


def test_public_modules_follow_the_docstring_rules() -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    files = _defining_files()
    assert any(f.endswith("_registry.py") for f in files)
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "D", "--ignore", "D417",
         "--output-format", "concise", *files],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr


# The public API only grows: removing or renaming one of these breaks users' code and needs a
# deprecation first. Add new public names here when they are added to __all__.
STABLE = {
    "Certificate", "DataNotFoundError", "ImageData", "InputError", "InputScores",
    "MitigationResult", "ModelFileError", "ScanResult", "TrojanscopeError", "__version__",
    "available", "create", "get", "load_dataset", "register",
}


def test_public_api_only_grows() -> None:
    gone = STABLE - set(trojanscope.__all__)
    assert not gone, f"public names removed from trojanscope.__all__: {sorted(gone)}"
    for name in trojanscope.__all__:
        assert hasattr(trojanscope, name), f"trojanscope.__all__ lists {name} but it is not there"
