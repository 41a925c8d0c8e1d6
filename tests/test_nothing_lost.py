"""Nothing lost (issue 12): no output overwrites an input, model files are byte-reproducible,
zoo workers die with their parent and a normal zoo exit is quiet."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trojanscope import InputError
from trojanscope.models import create_model, load_model, save_model, sidecar_path
from trojanscope.utils import atomic_write_json

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "trojanscope", *args], capture_output=True, text=True,
                           timeout=timeout, env=env)


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_a_loaded_file_cannot_be_overwritten(tmp_path):
    p = save_model(create_model("small_cnn", 10, (1, 8, 8)).eval(), tmp_path / "m.safetensors")
    before = _md5(p), _md5(sidecar_path(p))
    m = load_model(p)
    with pytest.raises(InputError, match="input of this command"):
        save_model(m, p)
    with pytest.raises(InputError, match="input of this command"):
        atomic_write_json(sidecar_path(p), {})
    os.symlink(p, tmp_path / "link.safetensors")
    with pytest.raises(InputError, match="input of this command"):
        save_model(m, tmp_path / "link.safetensors", format="safetensors")
    assert (_md5(p), _md5(sidecar_path(p))) == before
    save_model(m, tmp_path / "other.safetensors")  # any other path is fine


def test_cli_outputs_never_replace_inputs(tmp_path):
    m = tmp_path / "m.safetensors"
    r = _cli("train", "--out", str(m), "--data", "digits", "--epochs", "0.2", "--seed", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    before = _md5(m), _md5(sidecar_path(m))
    for args in (["train", "--init", str(m), "--out", str(m), "--epochs", "0.1"],
                 ["mitigate", str(m), "--out", str(m)],
                 ["evaluate", str(m), "--json", str(m)],
                 ["evaluate", str(m), "--json", str(sidecar_path(m))]):
        r = _cli(*args, "--data", "digits", "--device", "cpu")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "input" in r.stderr and "Traceback" not in r.stderr
    assert (_md5(m), _md5(sidecar_path(m))) == before


def test_train_twice_with_the_same_seed_gives_the_same_bytes(tmp_path):
    outs = []
    for d in ("a", "b"):
        out = tmp_path / d / "m.safetensors"
        r = _cli("train", "--out", str(out), "--data", "digits", "--epochs", "0.2", "--seed", "3", "--device", "cpu")
        assert r.returncode == 0, r.stderr
        outs.append(out)
    assert _md5(outs[0]) == _md5(outs[1])


@pytest.mark.parametrize("suffix", ["pt2", "pt", "pth"])
def test_torch_archives_are_byte_reproducible_across_processes(tmp_path, suffix):
    code = ("import sys, torch; from trojanscope.models import create_model, save_model; torch.manual_seed(0); "
            "save_model(create_model('small_cnn', 10, (1, 8, 8)).eval(), sys.argv[1])")
    env = {**os.environ, "PYTHONPATH": SRC}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        subprocess.run([sys.executable, "-c", code, str(tmp_path / d / f"m.{suffix}")], check=True, env=env,
                       capture_output=True, timeout=300)
    assert _md5(tmp_path / "a" / f"m.{suffix}") == _md5(tmp_path / "b" / f"m.{suffix}")
    m = load_model(tmp_path / "a" / f"m.{suffix}", arch="small_cnn" if suffix == "pth" else None)
    assert torch.isfinite(m(torch.rand(2, 1, 8, 8))).all()


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_zoo_workers_die_with_a_killed_parent_and_a_normal_exit_is_quiet(tmp_path):
    args = ["zoo", "build", "--data", "digits", "--size", "8", "--trigger-size", "3", "--workers", "2",
            "--min-cta", "0.0", "--train-subset", "300", "--eval-subset", "100"]
    r = _cli(*args, "--out", str(tmp_path / "small"), "--n-clean", "1", "--n-poisoned", "1", "--epochs", "0.5")
    assert r.returncode == 0, r.stderr
    assert "Exception ignored" not in r.stderr and "Bad file descriptor" not in r.stderr, r.stderr

    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trojanscope", *args, "--out", str(tmp_path / "big"),
                             "--n-clean", "20", "--n-poisoned", "20", "--epochs", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        workers: set[int] = set()
        deadline = time.time() + 120
        while time.time() < deadline and len(workers) < 3:  # forkserver + 2 workers
            time.sleep(0.5)
            workers = _descendants(proc.pid)
        assert len(workers) >= 3, "the pool did not start"
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.25)
        assert not [p for p in workers if _alive(p)], "zoo workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
