"""``trojanscope serve``: a real server on loopback, in front of the tiny backdoored digits model."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from trojanscope.serve.decode import BadRequest, Limits, decode  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


class Server:
    """``trojanscope serve`` in a child process; knows its port once it prints it."""

    def __init__(self, args: list[str], token: str | None = None) -> None:
        self.token = token
        self.proc = subprocess.Popen([sys.executable, "-m", "trojanscope", "serve", *args, "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, line + self.proc.stderr.read()
        self.url = f"http://127.0.0.1:{m.group(1)}"
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self.log: list[str] = []
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        self.log.extend(self.proc.stderr)

    def wait_ready(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "".join(self.log)
            try:
                status, body = self.request("GET", "/v1/health", timeout=5)
            except urllib.error.URLError:
                status = 0
            if status == 200:
                return body
            time.sleep(0.2)
        raise AssertionError("server not ready: " + "".join(self.log))

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
                token: str | None = "default", timeout: float = 60) -> tuple[int, dict | str]:
        headers = {"Content-Type": ctype} if ctype else {}
        tok = self.token if token == "default" else token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def npz_body(x: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.savez(b, x=x)
    return b.getvalue()


@pytest.fixture(scope="module")
def served(backdoor, tmp_path_factory):
    """The backdoored demo model behind a STRIP + KDE guard, with a token and a small queue."""
    from trojanscope.models import save_model

    d = tmp_path_factory.mktemp("serve")
    path = d / "bd.safetensors"
    save_model(backdoor["backdoored"], path, in_shape=backdoor["train"].in_shape)
    (d / "token").write_text(TOKEN + "\n")
    srv = Server([str(path), "--data", "digits", "--guard", "strip,kde", "--n-clean", "40",
                  "--token-file", str(d / "token"), "--max-queue", "2", "--max-batch", "64",
                  "--max-body", "400000", "--batch-wait-ms", "2"], token=TOKEN)
    try:
        srv.wait_ready()
        yield srv, path
    finally:
        srv.stop()


def _library(path: Path, x: torch.Tensor):
    """What the library says for the same model file, guard settings and inputs."""
    from trojanscope.guard import Guard
    from trojanscope.models.with_data import model_and_data

    model, (train,) = model_and_data(path, "digits", None, ("train",))
    guard = Guard(model, {"strip": {"seed": 0}, "kde": {"seed": 0}}, fpr=0.05, seed=0)
    guard.fit(train.clean_subset(40, seed=0))
    return guard, guard.predict(x)


def test_predictions_equal_library_and_trigger_is_flagged(served, backdoor):
    srv, path = served
    test = backdoor["test"]
    clean_x = test.x[test.y != backdoor["target"]][:48]
    trig_x = backdoor["trigger"].apply(clean_x)
    guard, lib = _library(path, torch.cat([clean_x, trig_x]))
    u8 = (torch.cat([clean_x, trig_x]) * 255).round().to(torch.uint8)  # what a client sends
    x = u8.float() / 255
    _, lib = _library(path, x)
    got = []
    for part in (x[:48], x[48:]):
        status, body = srv.request("POST", "/v1/predict", npz_body(part.numpy()), "application/x-npz")
        assert status == 200, body
        assert set(body["guard"]) == {"strip", "kde"}
        got += body["results"]
    assert [r["label"] for r in got] == lib.labels.tolist()
    for name in ("strip", "kde"):
        np.testing.assert_allclose([r["scores"][name] for r in got], lib.scores[name].numpy(),
                                   rtol=1e-4, atol=1e-4)
        assert body["guard"][name] == pytest.approx(guard.detectors_[name].threshold_, rel=1e-5)
    probs = np.array([r["probabilities"] for r in got])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    assert (probs.argmax(1) == lib.labels.numpy()).all()
    flagged = np.array([r["flagged"] for r in got])
    assert flagged[48:].mean() >= 0.9, "triggered inputs must be flagged"
    assert flagged[:48].mean() <= 0.2, "clean inputs must mostly pass"
    # the triggered inputs go to the target class: the guard is what stands between them
    assert np.mean([r["label"] == backdoor["target"] for r in got[48:]]) >= 0.9


def test_json_and_png_bodies(served, backdoor):
    from PIL import Image

    srv, _ = served
    x = backdoor["test"].x[:2]
    status, by_npz = srv.request("POST", "/v1/predict", npz_body(x.numpy()), "application/x-npz")
    assert status == 200
    status, by_json = srv.request("POST", "/v1/predict", json.dumps({"x": x.tolist()}).encode(),
                                  "application/json")
    assert status == 200
    assert [r["label"] for r in by_json["results"]] == [r["label"] for r in by_npz["results"]]
    png = io.BytesIO()
    Image.fromarray((x[0, 0] * 255).round().byte().numpy(), mode="L").save(png, format="PNG")
    status, by_png = srv.request("POST", "/v1/predict", png.getvalue(), "image/png")
    assert status == 200 and len(by_png["results"]) == 1
    assert by_png["results"][0]["label"] == by_npz["results"][0]["label"]


def test_token_required_except_health(served):
    srv, _ = served
    body = npz_body(np.zeros((1, 1, 16, 16), np.float32))
    assert srv.request("POST", "/v1/predict", body, "application/x-npz", token=None)[0] == 401
    assert srv.request("POST", "/v1/predict", body, "application/x-npz", token="wrong" * 5)[0] == 401
    assert srv.request("GET", "/metrics", token=None)[0] == 401
    assert srv.request("GET", "/v1/health", token=None)[0] == 200


def test_malformed_and_oversized_bodies(served):
    srv, _ = served
    bad = [
        (b"", "application/x-npz", 400),
        (b"not a zip", "application/x-npz", 400),
        (npz_body(np.zeros((1, 1, 8, 8), np.float32)), "application/x-npz", 400),   # wrong size
        (npz_body(np.full((1, 1, 16, 16), 2.0, np.float32)), "application/x-npz", 400),  # > 1
        (npz_body(np.full((1, 1, 16, 16), np.nan, np.float32)), "application/x-npz", 400),
        (npz_body(np.array(["a", "b"])), "application/x-npz", 400),
        (b'{"x": [[1, 2], [3]]}', "application/json", 400),
        (b'{"x": "hello"}', "application/json", 400),
        (b'[' * 100000, "application/json", 400),
        (b"{not json", "application/json", 400),
        (b"\x89PNG\r\n\x1a\n broken", "image/png", 400),
        (b"x", "text/plain", 415),
        (npz_body(np.zeros((65, 1, 16, 16), np.uint8)), "application/x-npz", 413),  # > max batch
        (b"0" * 400001, "application/json", 413),                                   # > max body
    ]
    for body, ctype, want in bad:
        status, answer = srv.request("POST", "/v1/predict", body, ctype)
        assert status == want, (body[:40], ctype, status, answer)
        assert isinstance(answer, dict) and answer["error"], answer
    assert srv.request("GET", "/v1/predict")[0] == 405
    assert srv.request("GET", "/nowhere")[0] == 404
    assert srv.wait_ready()["status"] == "ready"  # still serving


def test_flood_with_small_queue_answers_429(served):
    srv, _ = served
    body = npz_body(np.random.default_rng(0).random((64, 1, 16, 16), dtype=np.float32))
    codes: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        status, _ = srv.request("POST", "/v1/predict", body, "application/x-npz")
        with lock:
            codes.append(status)

    threads = [threading.Thread(target=client) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(codes) == 24 and set(codes) <= {200, 429}, codes
    assert 429 in codes and 200 in codes
    status, metrics = srv.request("GET", "/metrics")
    assert status == 200 and 'code="429"' in metrics and "trojanscope_queue_depth" in metrics


def test_decoder_refuses_zip_bomb_before_decompressing():
    lim = Limits((1, 16, 16), max_batch=4)
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", b"\0" * (50 << 20))  # 50 MB of zeros, a few KB compressed
    with pytest.raises(BadRequest) as e:
        decode(b.getvalue(), "application/x-npz", lim)
    assert e.value.status == 413


def test_refuses_public_bind_without_token(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"")
    p = subprocess.run([sys.executable, "-m", "trojanscope", "serve", str(tmp_path / "m.safetensors"),
                        "--host", "0.0.0.0"], capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("error:") == 1 and "token" in p.stderr and "Traceback" not in p.stderr


def test_bad_model_file_ends_with_one_error_line(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    p = subprocess.run([sys.executable, "-m", "trojanscope", "serve", str(bad), "--port", "0"],
                       capture_output=True, text=True, env=_env(), timeout=180)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("error:") == 1 and "Traceback" not in p.stderr


class _Hang(torch.nn.Module):
    """Answers normally, but loops for ever on an image whose first pixel is 1."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while bool(x[0, 0, 0, 0] > 0.999):
            i += 1
        return self.net(x)


def test_stuck_forward_answers_503_and_server_recovers_then_drains_on_sigterm(tmp_path):
    from trojanscope.models import create_model

    torch.manual_seed(0)
    net = create_model("small_cnn", 10, (1, 8, 8)).eval()
    torch.jit.script(_Hang(net)).save(str(tmp_path / "hang.pt"))
    srv = Server([str(tmp_path / "hang.pt"), "--data", "digits", "--guard", "strip", "--n-clean", "20",
                  "--forward-timeout", "3", "--batch-wait-ms", "1"])
    try:
        srv.wait_ready()
        ok = np.zeros((1, 1, 8, 8), np.float32)
        stuck = ok.copy()
        stuck[0, 0, 0, 0] = 1.0
        t0 = time.monotonic()
        status, body = srv.request("POST", "/v1/predict", npz_body(stuck), "application/x-npz")
        assert status == 503 and "3 s" in body["error"], body
        assert time.monotonic() - t0 < 3 + 10
        srv.wait_ready()  # a fresh worker, guard fitted again
        assert srv.request("POST", "/v1/predict", npz_body(ok), "application/x-npz")[0] == 200
        # graceful shutdown: requests in flight when SIGTERM arrives are all answered
        port = int(srv.url.rsplit(":", 1)[1])
        conns = []
        for _ in range(6):  # six requests sent and in flight ...
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("POST", "/v1/predict", npz_body(np.repeat(ok, 32, 0)),
                      {"Content-Type": "application/x-npz"})
            conns.append(c)
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)  # ... when the server is told to stop
        codes = [c.getresponse().status for c in conns]
        assert codes == [200] * 6
        assert srv.proc.wait(timeout=30) == 0
    finally:
        srv.stop()
