"""Issue 14, hostile input: serve (a streamed body counted to its limit, decoding off the event loop, a
decompression bomb, a bad address), bad .npz files, a manifest listing an image twice, malformed study YAML
and a truncated DICOM. Each ends in a status code or one line that names the value, the file and the fix."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import starlette.formparsers
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file

from medtl.core.config import DataConfig, ModelConfig
from medtl.core.errors import MedtlError
from medtl.data.dicom import read_dicom
from medtl.data.preprocess import Preprocess
from medtl.data.sources import discover
from medtl.deploy.predictor import Predictor
from medtl.deploy.serve import ENVELOPE, check_address, create_app
from medtl.experiments.study.grid import load_study
from medtl.models.strategies import build_classifier

LIMIT = 200_000  # --max-mb of the served apps here, in bytes
PART = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n")


@pytest.fixture(scope="module")
def pred() -> Predictor:
    """An untrained two-class ResNet-18 at 32 px: serving needs a model, not a good one."""
    torch.manual_seed(0)
    model = build_classifier(ModelConfig(backbone="resnet18", weights="none", strategy="full"), 1, 3, "none").eval()
    return Predictor(model, ["neg", "pos"], 0.5, Preprocess(32, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                     "resnet18", device=torch.device("cpu"))


def _png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), 90).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 30_000, rows: int = 1000) -> bytes:
    """The issue's bomb: a width x width 8-bit gray PNG of zeros, 0.9 GB of pixels in under 1 MB. Its zlib
    stream repeats one fully flushed block of `rows` rows (what the issue's one-liner compresses row by row,
    in 0.4 s instead of 5 s) and ends with the true Adler-32 of the whole, so the file is valid throughout."""
    assert width % rows == 0
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    z = zlib.compressobj(9)
    first = z.compress(bytes((width + 1) * rows)) + z.flush(zlib.Z_FULL_FLUSH)
    block = z.compress(bytes((width + 1) * rows)) + z.flush(zlib.Z_FULL_FLUSH)
    n = (width + 1) * width  # a filter byte per row, then the pixels: all zero, so Adler-32 is (n mod 65521, 1)
    stream = first + block * (width // rows - 1) + b"\x03\x00" + struct.pack(">I", (n % 65521) << 16 | 1)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, width, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", stream) + chunk(b"IEND", b""))


@contextlib.contextmanager
def serving(app):
    """A real uvicorn on 127.0.0.1 (a free port) in a thread; stopped on the way out."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert server.started, "uvicorn did not start within 30 s"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


# --- 6: a body without Content-Length is counted as it streams and refused at the limit -------------------------

def test_declared_sizes_over_the_limit_get_413_with_the_true_sizes(pred):
    client = TestClient(create_app(pred, max_bytes=LIMIT))
    big = client.post("/api/predict", files={"file": ("big.png", b"\0" * 400_000, "image/png")})
    assert big.status_code == 413
    assert big.json()["detail"] == "the upload is 0.4 MiB; the limit is 0.2 MiB (medtl serve --max-mb)"
    near = client.post("/api/predict", files={"file": ("near.png", b"\0" * (LIMIT + 10_000), "image/png")})
    assert near.status_code == 413  # within the multipart allowance: counted by the parser, its size told exactly
    assert near.json()["detail"] == "the upload is 210,000 bytes; the limit is 200,000 bytes (medtl serve --max-mb)"
    ok = client.post("/api/predict", files={"file": ("ok.png", _png(40), "image/png")})
    assert ok.status_code == 200 and set(ok.json()["probabilities"]) == {"neg", "pos"}


def test_a_chunked_upload_is_refused_before_it_is_spooled(pred, monkeypatch):
    """64 MiB offered in 64 KiB chunks without Content-Length: the app pulls only what passes the limit, and the
    multipart parser writes no more than that to its temporary file."""
    spooled = []

    class Counting(starlette.formparsers.SpooledTemporaryFile):
        def write(self, data):
            spooled.append(len(data))
            return super().write(data)

    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", Counting)
    pulled, sent = [], []
    chunks = iter([PART] + [b"x" * 65536] * 1024)

    async def receive():
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/predict", "raw_path": b"/api/predict", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=B"), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    asyncio.run(create_app(pred, max_bytes=LIMIT)(scope, receive, send))
    start = sent[0]
    assert start["status"] == 413 and (b"connection", b"close") in start["headers"]
    detail = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["detail"]
    assert detail == ("the upload is over 0.2 MiB (refused after 0.3 MiB); the limit is 0.2 MiB "
                      "(medtl serve --max-mb)")
    assert sum(pulled) <= LIMIT + ENVELOPE + 65536 + len(PART)  # stopped at the limit, not at 64 MiB
    assert sum(spooled) <= LIMIT + ENVELOPE


def test_a_real_server_answers_a_chunked_upload_with_413_and_hangs_up(pred):
    with serving(create_app(pred, max_bytes=LIMIT)) as url:
        conn = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10)
        conn.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(PART), PART))
        sent, total = 0, 64 * 2**20
        with contextlib.suppress(OSError):  # the server hangs up mid-upload: a reset or a timeout ends the sending
            while sent < total:
                conn.sendall(b"10000\r\n" + b"x" * 65536 + b"\r\n")
                sent += 65536
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                answer += chunk
        conn.close()
    assert sent < total and answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer.lower() and b"the upload is over 0.2 MiB" in answer


# --- 12: decoding off the event loop; a decompression bomb ----------------------------------------------------

def test_info_answers_while_eight_large_uploads_decode(pred):
    png = _png(6000)  # 36 MP each: ~0.1 s to decode; the old serve made info wait for all eight (seconds)
    done = []
    with serving(create_app(pred, max_bytes=50 * 2**20)) as url:
        def upload():
            r = httpx.post(url + "/api/predict", files={"file": ("big.png", png, "image/png")}, timeout=120)
            done.append((time.monotonic(), r.status_code))

        threads = [threading.Thread(target=upload) for _ in range(8)]
        start = time.monotonic()
        for t in threads:
            t.start()
        waits = []  # (asked at, seconds to answer)
        with httpx.Client(timeout=60) as client:
            while len(done) < 8 and time.monotonic() - start < 120:
                asked = time.monotonic()
                assert client.get(url + "/api/info").json()["max_bytes"] == 50 * 2**20
                waits.append((asked, time.monotonic() - asked))
                time.sleep(0.05)
        for t in threads:
            t.join(120)
    assert [s for _, s in done] == [200] * 8
    first_done = min(t for t, _ in done)
    during = [w for asked, w in waits if asked < first_done]
    assert len(during) >= 3, f"info was asked only {len(during)} times while the uploads decoded"
    assert max(during) < 1.0, f"info waited {max(during):.1f} s behind the uploads"


def test_a_decompression_bomb_gets_a_one_line_refusal_not_a_500(pred, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    assert bomb.stat().st_size < 2**20
    client = TestClient(create_app(pred, max_bytes=5 * 2**20))
    r = client.post("/api/predict", files={"file": ("bomb.png", bomb.read_bytes(), "image/png")})
    assert r.status_code in (413, 415)
    detail = r.json()["detail"]
    assert "'bomb.png'" in detail and "900" in detail and "pixel" in detail and "\n" not in detail
    assert client.get("/api/info").status_code == 200


def test_a_truncated_dicom_upload_says_truncated(pred):
    raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    r = TestClient(create_app(pred, max_bytes=LIMIT)).post("/api/predict", files={"file": ("ct.dcm", raw[:-1000])})
    assert r.status_code == 415 and "truncated: " in r.json()["detail"] and "of 32768 pixel bytes" in r.json()["detail"]


# --- 19: an address serve cannot listen on ------------------------------------------------------------------

def test_check_address_names_the_bad_port_or_host():
    with pytest.raises(MedtlError, match=r"^port 70000 is outside 1\.\.65535; pick a free port"):
        check_address("127.0.0.1", 70000)
    with pytest.raises(MedtlError, match=r"^port 0 is outside"):
        check_address("127.0.0.1", 0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MedtlError, match=f"^port {port} on 127.0.0.1 is already in use; .*another --port"):
            check_address("127.0.0.1", port)
    with pytest.raises(MedtlError, match=r"^host '192\.0\.2\.1' is not an address of this machine; use 127\.0\.0\.1"):
        check_address("192.0.2.1", 8000)  # TEST-NET-1: never local
    with pytest.raises(MedtlError, match=r"^host '300\.1\.1\.1' is not an address medtl serve can listen on"):
        check_address("300.1.1.1", 8000)
    check_address("127.0.0.1", port)  # free again once closed: the check itself leaves nothing bound


# --- 13: bad .npz files --------------------------------------------------------------------------------------

def _npz_arrays(n_train: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    return arrays


NPZ_CASES = {
    "negative_label": ({"train_labels": np.array([-1] + [0, 1] * 9 + [1]).reshape(-1, 1)},
                       r"train_labels\[0\] is -1 \(1 bad label\(s\)\); labels must be whole numbers 0\.\.K-1"),
    "more_labels": ({"train_images": np.zeros((10, 28, 28), np.uint8), "train_labels": np.arange(40) % 2},
                    "train_images has 10 images but train_labels has 40 labels; give one label per image"),
    "fractional_label": ({"val_labels": np.array([0.5, 0, 1, 0, 1, 0])}, r"val_labels\[0\] is 0\.5"),
    "text_labels": ({"train_labels": np.array(["a"] * 20)}, "train_labels is str32; save labels as integers"),
    "multi_label": ({"train_labels": np.zeros((20, 14), np.uint8)},
                    r"train_labels has shape \(20, 14\); give one class label per image"),
    "int64_images": ({"train_images": np.zeros((20, 28, 28), np.int64)},
                     r"train_images is int64 of shape \(20, 28, 28\); save images as uint8"),
    "channel_axis": ({"train_images": np.zeros((20, 28, 28, 1), np.uint8)}, r"drop the channel axis"),
    "empty_split": ({"test_images": np.zeros((0, 28, 28), np.uint8), "test_labels": np.zeros(0, np.uint8)},
                    r"test_images is empty \(0 images\); fill it, or leave out test_images and test_labels"),
    "labels_only": ({"val_images": None}, "has val_labels but no val_images; give both or neither"),
    "keras_keys": ({"train_images": None, "train_labels": None},
                   r"lacks train_images/train_labels \(it holds: test_images, test_labels, val_images, val_labels\)"),
}


def _refused_in_one_line(path: Path, message: str) -> None:
    """Reading `path` as data fails with one MedtlError line that names the file and matches `message`."""
    with pytest.raises(MedtlError, match=message) as info:
        discover(DataConfig(path=str(path)))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", NPZ_CASES)
def test_bad_npz_contents_are_one_line_naming_file_key_and_fix(tmp_path, case):
    change, message = NPZ_CASES[case]
    arrays = {**_npz_arrays(), **change}
    path = tmp_path / f"{case}.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    _refused_in_one_line(path, message)


@pytest.mark.parametrize("case, message", [
    ("text", r"is not a \.npz file \(a zip of \.npy arrays; it starts with b'hello'\)"),
    ("npy", r"holds one array \(a \.npy file\), not a \.npz of named arrays"),
    ("cut", r"is not a readable \.npz file \(BadZipFile: "),
    ("empty", r"is not a \.npz file .*it starts with b''"),
])
def test_a_file_that_is_not_an_npz_says_so(tmp_path, case, message):
    path = tmp_path / "m.npz"
    if case == "text":
        path.write_text("hello")
    elif case == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif case == "cut":
        np.savez(tmp_path / "whole.npz", **_npz_arrays())
        path.write_bytes((tmp_path / "whole.npz").read_bytes()[:5000])
    else:
        path.write_bytes(b"")
    with pytest.raises(MedtlError, match=message) as info:
        discover(DataConfig(path=str(path)))
    assert str(info.value).startswith(str(path)) and "numpy.savez" in str(info.value)


def test_npz_labels_beyond_the_class_names_are_refused(tmp_path):
    arrays = _npz_arrays()
    arrays["test_labels"] = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(MedtlError, match=r"class_names has 2 names but .*m\.npz has 3 labels \(0\.\.2\); give 3 names"):
        discover(DataConfig(path=str(tmp_path / "m.npz"), class_names=("a", "b")))
    splits = discover(DataConfig(path=str(tmp_path / "m.npz"), class_names=("a", "b", "c")))
    assert splits.labels["test"].tolist() == [0, 1, 2, 0, 1, 2]


# --- 15: an image listed twice in a manifest ------------------------------------------------------------------

def _manifest(tmp_path: Path, extra: list[str], split: bool = False) -> Path:
    for i in range(12):
        Image.new("L", (8, 8), 20 * i).save(tmp_path / f"{i}.png")
    head = "path,label,split" if split else "path,label"
    rows = [f"{i}.png,{'pos' if i % 2 else 'neg'}" + (",train" if split else "") for i in range(12)]
    path = tmp_path / "m.csv"
    path.write_text("\n".join([head, *rows, *extra]) + "\n")
    return path


def test_a_repeated_row_with_the_same_label_is_kept_once_and_listed(tmp_path):
    path = _manifest(tmp_path, ["0.png,neg", "./0.png,neg", "3.png,pos"])
    splits = discover(DataConfig(path=str(path), val_fraction=0.25, test_fraction=0.25))
    refs = splits.all_refs()
    assert len(refs) == len(set(refs)) == 12  # each image in exactly one split, once
    assert splits.rejected == {
        str(tmp_path / "0.png"): "m.csv rows 14, 15: './0.png' again, as in row 2 (same label); row 2 is kept",
        str(tmp_path / "3.png"): "m.csv row 16: '3.png' again, as in row 5 (same label); row 5 is kept"}


@pytest.mark.parametrize("extra, split, message", [
    (["0.png,pos"], False, r"'0\.png' is listed twice with different labels \(row 2: 'neg', row 14: 'pos'\); "
                           "keep one row per image"),
    (["0.png,neg,test"], True, r"'0\.png' is listed twice with different splits \(row 2: 'train', row 14: 'test'\)"),
])
def test_a_repeated_row_that_disagrees_names_both_rows(tmp_path, extra, split, message):
    path = _manifest(tmp_path, extra, split)
    _refused_in_one_line(path, message)


# --- 19: malformed study YAML ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("name: x\ngrid: {backbone: [resnet18]\nseed: 1\n", r": not valid YAML at line 3, column 1: expected ',' or '}'"),
    ("grid:\n\tbackbone: [resnet18]\n", r": not valid YAML at line 2, column 1: found character '\\t'"),
    ("- resnet18\n- seed\n", r": the top level is a list \(\"\['resnet18', 'seed'\]\"\); a study is a mapping"),
    ("just words\n", r": the top level is a str \('just words'\); a study is a mapping"),
    ("grid: [resnet18]\n", r": grid must be a mapping, not a list"),
    ("base: fast\ngrid: {backbone: [resnet18]}\n", r": base must be a mapping, not a str \('fast'\)"),
    ("grid: {backbone: [resnet18]}\nexclude: {backbone: resnet18}\n", r": exclude must be a list of mappings"),
    ("grid: {backbone: [resnet18]}\nexclude: [resnet18]\n", r": exclude must be a list of mappings"),
    ("grid: {bakbone: [resnet18]}\n", r": grid: unknown setting 'bakbone' \(did you mean backbone\?\)"),
    ("grid: {1: [resnet18]}\n", r": grid key 1 is not a setting name"),
    ("grid: {backbone: [resnet18], lr: [fast]}\n", r": config\.train\.lr: cannot read 'fast' as float"),
    ("name: [a, b]\ngrid: {backbone: [resnet18]}\n", r": name must be a plain name, not a list"),
])
def test_malformed_study_files_are_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(MedtlError, match=message) as info:
        load_study(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_a_binary_study_file_is_one_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"\xff\xfe\x00grid")
    with pytest.raises(MedtlError, match=r"study\.yaml is not a UTF-8 text file \(invalid start byte at byte 0\)"):
        load_study(path)


# --- 21: a truncated DICOM; a DICOM over the pixel limit ------------------------------------------------------

def test_a_truncated_dicom_is_told_truncated_not_compressed(tmp_path):
    source = Path(get_testdata_file("CT_small.dcm"))
    assert pydicom.dcmread(source).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # uncompressed
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(source.read_bytes()[:-1000])
    have = len(pydicom.dcmread(cut).PixelData)
    with pytest.raises(ValueError) as info:
        read_dicom(cut)
    assert str(info.value) == (f"{cut}: truncated: {have} of 32768 pixel bytes (128x128, 16-bit); the file was cut "
                               "short (an interrupted copy or download): copy it again from its source")
    assert "convert" not in str(info.value)


def test_a_dicom_over_the_pixel_limit_is_refused_before_decoding(monkeypatch):
    ct = get_testdata_file("CT_small.dcm")

    def no_decoding(self):
        raise AssertionError("pixels decoded despite the limit")

    with monkeypatch.context() as m:
        m.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoding))
        with pytest.raises(ValueError, match=r"CT_small\.dcm: 128x128 is 16384 pixels, over the limit of 16000; "
                                             "downscale the image"):
            read_dicom(ct, max_pixels=16_000)
    assert read_dicom(ct, max_pixels=16_384).size == (128, 128)
    assert read_dicom(ct).size == (128, 128)  # None: no limit
