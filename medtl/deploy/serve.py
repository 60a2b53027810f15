"""A small web page for a trained run: upload an image or DICOM, see class probabilities and the Grad-CAM overlay.

FastAPI with one plain HTML page rather than Gradio: two small dependencies instead of a large front-end
stack, nothing fetched from the internet at run time (hospital machines are often offline), and an API
(`POST /api/predict`) that scripts can call too. Uploads are decoded in memory; anything the multipart parser
spools to disk goes to the system temp dir and is deleted after the request. The body is counted as it streams
in and refused at the limit, so a chunked upload (no Content-Length) cannot fill the disk; decoding and the
model run in worker threads, so a slow upload never holds up the other routes.
"""

from __future__ import annotations

import base64
import errno
import html
import io
import ipaddress
import logging
import socket
import threading

import numpy as np
import torch
from fastapi import FastAPI, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medtl.core.errors import MedtlError
from medtl.deploy.explain import cams, overlay
from medtl.deploy.predictor import Predictor
from medtl.deploy.uploads import open_upload
from medtl.evaluation.shift import FLAG_QUANTILE

log = logging.getLogger(__name__)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medtl: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 52rem; }}
#error {{ color: #b00020; font-weight: 600; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: .3rem .7rem; }} img {{ width: 22rem; margin-top: 1rem; }}
</style></head>
<body><h1>medtl: {title}</h1>
<p>Classes: {classes}. Threshold {threshold} (chosen on validation). Not for clinical use.</p>
<p>Refer: the model's set of possible classes at {coverage} coverage (calibrated on validation) is not its answer
alone. Unlike the training images: the image's features are farther from the training images' than
{flag_quantile} of the run's validation images are.</p>
<form id="form"><input type="file" id="file" name="file" accept="image/*,.dcm,.dicom">
<button type="submit" id="submit">Predict</button></form>
<p id="error" role="alert"></p>
<div id="result" hidden><p>Predicted class: <strong id="predicted"></strong></p>
<p id="referral"></p><p id="unlike"></p>
<table id="probs"><thead><tr><th>class</th><th>probability</th></tr></thead><tbody></tbody></table>
<img id="overlay" alt="Grad-CAM overlay"></div>
<script>
document.getElementById("form").addEventListener("submit", async (event) => {{
  event.preventDefault();
  const file = document.getElementById("file").files[0];
  const error = document.getElementById("error"), result = document.getElementById("result");
  error.textContent = ""; result.hidden = true;
  if (!file) {{ error.textContent = "Choose a file first."; return; }}
  const body = new FormData(); body.append("file", file);
  const response = await fetch("api/predict", {{ method: "POST", body }});
  const data = await response.json();
  if (!response.ok) {{ error.textContent = data.detail; return; }}
  document.getElementById("predicted").textContent = data.predicted;
  document.getElementById("referral").textContent = data.refer === null ? "Referral: not available for this run." :
    (data.refer ? "Refer: not sure at " : "No referral needed at ") + Math.round(data.coverage * 1000) / 10 + "% coverage (classes that " +
    "may be true: " + (data.prediction_set.join(", ") || "none") + ").";
  document.getElementById("unlike").textContent = data.unlike_training === null ?
    "Unlike the training images: not available for this run." : (data.unlike_training ?
    "Unlike the training images: yes" : "Unlike the training images: no") + " (its distance to the training images is above " +
    data.unlike_percentile.toFixed(0) + "% of the run's validation images').";
  const rows = document.querySelector("#probs tbody"); rows.innerHTML = "";
  for (const [name, p] of Object.entries(data.probabilities)) {{
    const tr = rows.insertRow(); tr.insertCell().textContent = name; tr.insertCell().textContent = p.toFixed(4);
  }}
  document.getElementById("overlay").src = "data:image/png;base64," + data.overlay_png;
  result.hidden = false;
}});
</script></body></html>
"""


ENVELOPE = 64 * 1024  # multipart boundaries and part headers around the file: allowed on top of --max-mb
# A body refused while it streams has no known end (a chunked upload can go on forever): hang up after the 413
# rather than read on. A declared Content-Length is read to its end and dropped (no disk, no memory), so a
# browser, still sending, surely gets the 413's message instead of a reset connection.
CLOSE = {"Connection": "close"}
DECODES = 4  # uploads decoded at once: each can take ~1 GB at PIL's pixel limit; the rest wait their turn


def create_app(pred: Predictor, max_bytes: int = 20 * 2**20, method: str = "gradcam") -> FastAPI:
    """The page and the API for one predictor; uploads over `max_bytes` are refused with a 413."""
    app = FastAPI(title="medtl", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    lock = threading.Lock()  # one model: CAM hooks and gradients are not safe to share between requests
    decodes = threading.BoundedSemaphore(DECODES)
    page = PAGE.format(title=html.escape(pred.backbone), classes=html.escape(", ".join(pred.classes)),
                       threshold=f"{pred.threshold:.3f}" if pred.binary else "argmax",
                       coverage=f"{pred.coverage:.0%}", flag_quantile=f"{FLAG_QUANTILE:.0%}")

    # async, so they answer on the event loop even while every worker thread is decoding an upload
    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/api/info")
    async def info() -> dict:
        return {"backbone": pred.backbone, "classes": pred.classes, "threshold": pred.threshold,
                "image_size": pred.size, "max_bytes": max_bytes,
                "coverage": pred.coverage if pred.reference is not None else None}

    @app.post("/api/predict")
    async def predict(file: UploadFile) -> JSONResponse:
        if file.size is not None and file.size > max_bytes:  # what the parser counted, not what we read
            return JSONResponse({"detail": _too_large(file.size, max_bytes)}, status_code=413)
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            return JSONResponse({"detail": _over_limit(len(data), max_bytes)}, status_code=413)
        try:
            pixels = await run_in_threadpool(_decode, pred, data, decodes)
        except ValueError as exc:  # PIL's own bomb error, too, arrives as OverPixelLimit (a ValueError)
            return JSONResponse({"detail": _unreadable(file.filename, exc)}, status_code=415)
        return JSONResponse(await run_in_threadpool(_locked_answer, pred, pixels, method, lock))

    return app


class _BodyTooLarge(HTTPException):
    """Raised from `receive` inside the parser: FastAPI passes HTTPExceptions on, its handler answers 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail, headers=CLOSE)


class BodyLimit:
    """Pure ASGI middleware: refuses a request body over `max_bytes` (+ the multipart envelope) as it streams
    in, by counting the bytes `receive` hands over, before the multipart parser spools them to disk. A
    Content-Length over the limit is refused before any byte is read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes, self.limit = app, max_bytes, max_bytes + ENVELOPE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": _too_large(int(length), self.max_bytes)}, status_code=413)(
                scope, receive, send)
            return
        read, started = 0, False

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.limit:
                    raise _BodyTooLarge(_over_limit(read, self.max_bytes))
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge as exc:  # read outside a route's handler (which would have answered it)
            if started:
                raise
            await JSONResponse({"detail": exc.detail}, status_code=413, headers=CLOSE)(scope, receive, send)


def _too_large(size: int, limit: int) -> str:
    upload, most = _sizes(size, limit)
    return f"the upload is {upload}; the limit is {most} (medtl serve --max-mb)"


def _over_limit(read: int, limit: int) -> str:
    """A body refused while it streamed in: its full size is unknown, only that it passed the limit."""
    upload, most = _sizes(read, limit)
    return f"the upload is over {most} (refused after {upload}); the limit is {most} (medtl serve --max-mb)"


def _sizes(size: int, limit: int) -> tuple[str, str]:
    """Both in MiB to one decimal, or in bytes where that would print them the same."""
    mib = f"{size / 2**20:.1f} MiB", f"{limit / 2**20:.1f} MiB"
    return mib if mib[0] != mib[1] else (f"{size:,} bytes", f"{limit:,} bytes")


def _unreadable(name: str | None, exc: ValueError) -> str:
    reason = " ".join(str(exc).split())
    return (f"'{name}' is not an image or DICOM file medtl can read ({reason}); upload a PNG, JPEG, TIFF, BMP or "
            "DICOM image")


def _decode(pred: Predictor, data: bytes, decodes: threading.BoundedSemaphore) -> torch.Tensor:
    """In a worker thread, a few at a time: the upload's bytes to the model's uint8 pixels."""
    with decodes:
        return pred.pixels(open_upload(data, pred.decoding.window, pred.decoding.max_pixels, pred.preprocess.reduce_to))


def _locked_answer(pred: Predictor, pixels: torch.Tensor, method: str, lock: threading.Lock) -> dict:
    """In a worker thread, one request at a time on the model."""
    with lock:
        return _answer(pred, pixels, method)


def _answer(pred: Predictor, pixels: torch.Tensor, method: str) -> dict:
    probs, feats = pred.outputs(pixels[None])
    decided = pred.decide(probs)
    k, extra = int(decided[0]), pred.assess(probs, feats, decided)[0]
    maps, _ = cams(pred, pixels[None], method, classes=np.array([k]))
    buf = io.BytesIO()
    Image.fromarray(overlay(pixels, maps[0])).save(buf, format="PNG")
    return {"predicted": pred.classes[k], "probabilities": dict(zip(pred.classes, map(float, probs[0]))),
            "threshold": pred.threshold, "overlay_png": base64.b64encode(buf.getvalue()).decode("ascii"),
            **extra, "coverage": pred.coverage if pred.reference is not None else None}


def check_address(host: str, port: int) -> None:
    """MedtlError (one line) unless `host`:`port` can be bound now: a port outside 1..65535, a host that is not
    an address of this machine, a port in use or one that needs privileges. Binds a socket and closes it. An
    address other than loopback logs a warning: the page has no login."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise MedtlError(f"port {port} is outside 1..65535; pick a free port, e.g. medtl serve RUN --port 8000")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise MedtlError(f"host '{host}' is not an address medtl serve can listen on ({exc}); use 127.0.0.1 "
                         "(this machine only) or 0.0.0.0 (every network) with --host") from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a TIME_WAIT port is free
        try:
            sock.bind(address)
        except OSError as exc:
            raise MedtlError(_bind_error(host, port, exc)) from exc
    bound = ipaddress.ip_address(address[0].split("%")[0])  # (an IPv6 scope, fe80::1%eth0, is not part of it)
    if not bound.is_loopback:
        log.warning("--host %s: the page and its API have no login and are reachable from the network (%s, port %d): "
                    "anyone who can reach this machine can upload images and read the model's answers; keep --host "
                    "127.0.0.1 unless the network is trusted, or put an authenticating proxy in front", host,
                    "every interface" if bound.is_unspecified else bound, port)


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use; stop the program using it or pick another --port"
    if exc.errno == errno.EACCES:
        return f"port {port} on {host} needs administrator rights (ports below 1024); pick --port 8000 or above"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"host '{host}' is not an address of this machine; use 127.0.0.1 (this machine only) or 0.0.0.0 "
                "(every network) with --host")
    return f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --host or --port"
