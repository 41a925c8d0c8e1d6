"""The isolated worker (trojanscope.sandbox) and the CLI's --timeout/--max-memory: hostile
TorchScript models that loop forever or allocate huge tensors are stopped with one error line,
SIGTERM ends a command stuck in native code within 5 s, secrets stay in the parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from trojanscope.cli.main import app
from trojanscope.errors import InputError
from trojanscope.sandbox import (
    GiB,
    SandboxError,
    SandboxMemoryError,
    SandboxTimeout,
    clean_environment,
    parse_memory,
    run_isolated,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


class _Loop(_Linear):
    def forward(self, x):  # never returns (i stays >= 0 for 2**63 steps)
        y = self.fc(x.flatten(1))
        i = 0
        while i >= 0:
            y = y * 1.0
            i = i + 1
        return y


class _Huge(_Linear):
    def forward(self, x):  # asks for 16 GiB (never touched: harmless if a limit failed)
        big = torch.empty([1 << 34], dtype=torch.uint8)
        return self.fc(x.flatten(1)) + big[:1].float() * 0


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sandbox")
    paths = {}
    for name, cls in (("ok", _Linear), ("loop", _Loop), ("huge", _Huge)):
        paths[name] = d / f"{name}.pt"
        torch.jit.script(cls()).save(str(paths[name]))
    return paths


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "trojanscope", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _wait_for_child(p: subprocess.Popen, limit: float = 120.0) -> tuple[int, float]:
    end = time.monotonic() + limit
    while time.monotonic() < end and p.poll() is None:
        kids = _children(p.pid)
        if kids:
            return kids[0], time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"no worker process appeared (rc {p.poll()})")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------------ the library


def test_memory_option_and_environment_policy():
    assert parse_memory("8G") == 8 * GiB and parse_memory("512M") == 512 << 20
    assert parse_memory("1.5GiB") == int(1.5 * GiB) and parse_memory("0") == 0 and parse_memory("2") == 2 * GiB
    assert parse_memory("auto") >= 2 * GiB
    for bad in ("lots", "-1G", "nan", "10K"):
        with pytest.raises(InputError):
            parse_memory(bad)
    env = clean_environment({"PATH": "/bin", "HOME": "/h", "OMP_NUM_THREADS": "1", "LC_ALL": "C",
                             "AWS_SECRET_ACCESS_KEY": "x", "GITHUB_TOKEN": "x", "DB_PASSWORD": "x",
                             "OPENAI_API_KEY": "x", "TROJANSCOPE_API_TOKEN": "x", "DATABASE_URL": "x",
                             "SSH_AUTH_SOCK": "x", "TORCH_HOME": "/t", "MY_VAR": "v",
                             "TROJANSCOPE_SANDBOX_KEEP_ENV": "MY_VAR"})
    assert set(env) == {"PATH", "HOME", "OMP_NUM_THREADS", "LC_ALL", "TORCH_HOME", "MY_VAR",
                        "TROJANSCOPE_SANDBOX_KEEP_ENV"}


def _echo(x, scale, progress):
    print("hello from the child")
    progress({"step": 1})
    return {"y": x * scale, "n": int(x.numel()), "pid": os.getpid()}


def test_results_come_back_as_data(capsys):
    got = []
    x = torch.arange(6.0).reshape(2, 3)
    res = run_isolated(_echo, {"x": x, "scale": 2.0}, timeout=60, progress=got.append, start="fork")
    assert torch.equal(res["y"], x * 2) and res["n"] == 6 and res["pid"] != os.getpid()
    assert got == [{"step": 1}]
    assert "hello from the child" in capsys.readouterr().out


def test_spawn_start_gives_the_same_result():
    from trojanscope.sandbox import describe_bytes

    assert run_isolated(describe_bytes, {"n": 3 * GiB}, timeout=120, start="spawn") == "3 GiB"


_AUTO_PROBE = """
import json, sys, threading
import torch
from trojanscope.sandbox import run_isolated
import where_am_i
from where_am_i import forked

where_am_i.MARK = True  # a forked child inherits it, a spawned one starts afresh
stop = threading.Event()
threading.Thread(target=stop.wait).start()  # a Python thread (the CLI's exit watchdog): fork is fine
res = [run_isolated(forked, {}, timeout=120)]
torch.set_num_threads(2)
x = torch.rand(4_000_000)
(x * 2 + 1).sum()  # torch's OpenMP pool starts: a forked child would hang, so auto spawns
res.append(run_isolated(forked, {}, timeout=120))
stop.set()
print(json.dumps(res))
"""


def test_auto_start_spawns_once_openmp_has_started(tmp_path):
    (tmp_path / "where_am_i.py").write_text("MARK = False\n\ndef forked():\n    return MARK\n")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", _AUTO_PROBE], capture_output=True, text=True, env=env,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [True, False]


def _raise(kind):
    if kind == "input":
        raise InputError("bad input, said the child")
    if kind == "runtime":
        raise RuntimeError("first line\nshape mismatch in the model")
    if kind == "abort":
        os.abort()
    if kind == "alloc":
        return torch.empty(1 << 34, dtype=torch.uint8).numel()
    if kind == "sleep":
        time.sleep(60)
    if kind == "exit":
        import typer

        raise typer.Exit(3)  # a verdict's exit status (3 = inconclusive)
    return None


def test_child_errors_become_project_errors():
    with pytest.raises(InputError, match="bad input, said the child"):
        run_isolated(_raise, {"kind": "input"}, timeout=60, start="fork")
    with pytest.raises(SandboxError, match="RuntimeError: shape mismatch in the model"):
        run_isolated(_raise, {"kind": "runtime"}, timeout=60, start="fork")
    with pytest.raises(SystemExit) as ex:
        run_isolated(_raise, {"kind": "exit"}, timeout=60, start="fork")
    assert ex.value.code == 3
    with pytest.raises(SandboxError, match=r"crashed \(SIGABRT\)"):
        run_isolated(_raise, {"kind": "abort"}, timeout=60, max_memory=0, start="fork")
    vm = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) << 10
    limit = vm + GiB  # this process's address space plus 1 GiB; the child asks for 16 GiB
    with pytest.raises(SandboxMemoryError, match="exceeded the memory limit"):
        run_isolated(_raise, {"kind": "alloc"}, timeout=60, max_memory=limit, start="fork")
    assert run_isolated(_raise, {"kind": "alloc"}, timeout=60, max_memory=0, start="fork") == 1 << 34
    t = time.monotonic()
    with pytest.raises(SandboxTimeout, match="did not finish within 1 s"):
        run_isolated(_raise, {"kind": "sleep"}, timeout=1, start="fork")
    assert time.monotonic() - t < 1 + 5


_SECRET_PROBE = """
import json, os, sys
from pathlib import Path
from trojanscope.sandbox import run_isolated

def probe():
    return {"env": dict(os.environ), "proc": Path("/proc/self/environ").read_bytes().decode("latin-1")}

if __name__ == "__main__":
    from secret_probe import probe  # importable by name, as start="spawn" needs
    print(json.dumps(run_isolated(probe, {}, timeout=60, start=sys.argv[1])))
"""


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_the_child_does_not_see_secrets(start, tmp_path):
    (tmp_path / "secret_probe.py").write_text(_SECRET_PROBE)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + str(tmp_path), "MY_SERVICE_TOKEN": "s3cr3t-t0ken",
           "AWS_SECRET_ACCESS_KEY": "s3cr3t-aws", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(tmp_path / "secret_probe.py"), start], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert "MY_SERVICE_TOKEN" not in got["env"] and "AWS_SECRET_ACCESS_KEY" not in got["env"]
    assert got["env"]["OMP_NUM_THREADS"] == "1" and "PATH" in got["env"]
    assert "s3cr3t" not in got["proc"]  # not even in /proc/self/environ
    assert "OMP_NUM_THREADS=1" in got["proc"]


# ------------------------------------------------------------------ the CLI


def test_evaluate_gives_the_same_numbers_isolated(models, tmp_path, monkeypatch):
    runner = CliRunner()
    args = ["evaluate", str(models["ok"]), "--data", "digits", "--device", "cpu"]
    r1 = runner.invoke(app, [*args, "--json", str(tmp_path / "a.json")])
    assert r1.exit_code == 0, r1.output + repr(r1.exception)
    assert "clean test accuracy" in r1.output  # printed by the child, relayed by the parent
    monkeypatch.setenv("TROJANSCOPE_NO_SANDBOX", "1")
    r2 = runner.invoke(app, [*args, "--json", str(tmp_path / "b.json")])
    assert r2.exit_code == 0, r2.output
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["cta"] == b["cta"] and a["n_test"] == b["n_test"] == 359


def test_a_huge_allocation_is_a_clean_memory_error(models):
    r = CliRunner().invoke(app, ["evaluate", str(models["huge"]), "--data", "digits", "--device", "cpu",
                                 "--max-memory", "4G"])
    assert r.exit_code != 0
    assert isinstance(r.exception, SandboxMemoryError)
    assert str(r.exception) == "the model exceeded the memory limit of 4 GiB (--max-memory)"


def test_a_looping_model_is_killed_after_the_timeout(models):
    p = _cli("evaluate", str(models["loop"]), "--data", "digits", "--device", "cpu", "--timeout", "3")
    child, t_fork = _wait_for_child(p)
    # forked (milliseconds), not spawned (a new interpreter importing torch): same command line
    assert b"evaluate" in Path(f"/proc/{child}/cmdline").read_bytes()
    out, err = p.communicate(timeout=120)
    elapsed = time.monotonic() - t_fork
    assert p.returncode == 2
    assert elapsed < 3 + 5, elapsed
    assert err.strip() == "error: loop.pt did not finish within 3 s (--timeout) and was stopped"
    assert not _alive(child)


@pytest.mark.parametrize("isolated", [True, False])
def test_sigterm_ends_a_stuck_forward_within_5_s(models, isolated):
    env = {} if isolated else {"TROJANSCOPE_NO_SANDBOX": "1"}
    p = _cli("evaluate", str(models["loop"]), "--data", "digits", "--device", "cpu", env=env)
    if isolated:
        child, _ = _wait_for_child(p)
    # the CLI catches SIGTERM once its imports are done (seconds on a loaded machine): wait for
    # that, then let it get stuck in the forward
    deadline = time.monotonic() + 120
    while not _catches_sigterm(p.pid) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.2)
    time.sleep(8)  # loading done, stuck in forward (or still loading on a slow machine: same rule)
    assert p.poll() is None
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert time.monotonic() - t < 5
    assert p.returncode == 130
    assert "Traceback" not in err and err.strip() == "interrupted"
    if isolated:
        assert not _alive(child)


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (Linux: /proc/PID/status SigCgt)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # no /proc (not Linux): fall back to the fixed wait
    mask = next((int(line.split()[1], 16) for line in text.splitlines() if line.startswith("SigCgt:")), 0)
    return bool(mask >> (signal.SIGTERM - 1) & 1)


def _garble():
    os.write(sys.stdout._chan.fd, b"this is not JSON\n")  # what a subverted worker might send
    time.sleep(60)


def test_a_malformed_message_stops_the_worker():
    t = time.monotonic()
    with pytest.raises(SandboxError, match="malformed message"):
        run_isolated(_garble, {}, timeout=60, start="fork")
    assert time.monotonic() - t < 10
