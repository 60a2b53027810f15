"""`medtl serve`: the API on a model trained on real X-rays, and the page driven in headless Chromium."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from medtl.deploy.predictor import Predictor
from medtl.deploy.serve import create_app

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]  # each builds a real run first
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("MEDTL_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def _xray(root: Path) -> Path:
    return sorted((root / "test" / "PNEUMONIA").iterdir())[0]


def test_api_answers_rejects_and_limits(xray_run, tmp_path):
    run_dir, root = xray_run
    client = TestClient(create_app(Predictor.from_run(run_dir), max_bytes=200_000))
    ok = client.post("/api/predict", files={"file": ("x.jpeg", _xray(root).read_bytes(), "image/jpeg")})
    assert ok.status_code == 200
    body = ok.json()
    assert set(body["probabilities"]) == {"NORMAL", "PNEUMONIA"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-5 and body["overlay_png"].startswith("iVBORw0KGgo")
    dicom = client.post("/api/predict", files={"file": ("ct.dcm", Path(get_testdata_file("CT_small.dcm")).read_bytes())})
    assert dicom.status_code == 200
    text = client.post("/api/predict", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert text.status_code == 415 and "'notes.txt' is not an image" in text.json()["detail"]
    big = client.post("/api/predict", files={"file": ("big.png", b"\0" * 400_000, "image/png")})
    assert big.status_code == 413 and "limit is 0.2 MiB" in big.json()["detail"]
    assert client.get("/api/info").json()["classes"] == ["NORMAL", "PNEUMONIA"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(xray_run):
    run_dir, _ = xray_run
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medtl", "serve", str(run_dir), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "api/info", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"medtl serve exited: {proc.stdout.read()}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("medtl serve did not answer within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_browser_upload_shows_class_and_overlay_and_rejects_text(server, xray_run, tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (.ci/run installs Debian's chromium: apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    _, root = xray_run
    note = tmp_path / "notes.txt"
    note.write_text("not an image")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server)
        page.set_input_files("#file", str(_xray(root)))
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        assert page.inner_text("#predicted") in ("NORMAL", "PNEUMONIA")
        page.wait_for_function("document.getElementById('overlay').complete")
        assert page.evaluate("document.getElementById('overlay').naturalWidth") == 128
        assert len(page.query_selector_all("#probs tbody tr")) == 2
        page.screenshot(path=str(ARTIFACTS / "serve_prediction.png"), full_page=True)
        page.set_input_files("#file", str(note))
        page.click("#submit")
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
        assert "is not an image" in page.inner_text("#error")
        assert page.is_hidden("#result")
        page.screenshot(path=str(ARTIFACTS / "serve_rejected.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "serve_prediction.png").stat().st_size > 10_000
