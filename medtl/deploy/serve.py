"""A small web page for a trained run: upload an image or DICOM, see class probabilities and the Grad-CAM overlay.

FastAPI with one plain HTML page rather than Gradio: two small dependencies instead of a large front-end
stack, nothing fetched from the internet at run time (hospital machines are often offline), and an API
(`POST /api/predict`) that scripts can call too. Uploads are decoded in memory; anything the multipart parser
spools to disk goes to the system temp dir and is deleted after the request.
"""

from __future__ import annotations

import base64
import html
import io
import threading

import numpy as np
from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from medtl.deploy.explain import cams, overlay
from medtl.deploy.predictor import Predictor, open_upload

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medtl: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 52rem; }}
#error {{ color: #b00020; font-weight: 600; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: .3rem .7rem; }} img {{ width: 22rem; margin-top: 1rem; }}
</style></head>
<body><h1>medtl: {title}</h1>
<p>Classes: {classes}. Threshold {threshold} (chosen on validation). Not for clinical use.</p>
<form id="form"><input type="file" id="file" name="file" accept="image/*,.dcm,.dicom">
<button type="submit" id="submit">Predict</button></form>
<p id="error" role="alert"></p>
<div id="result" hidden><p>Predicted class: <strong id="predicted"></strong></p>
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
  const rows = document.querySelector("#probs tbody"); rows.innerHTML = "";
  for (const [name, p] of Object.entries(data.probabilities)) {{
    const tr = rows.insertRow(); tr.insertCell().textContent = name; tr.insertCell().textContent = p.toFixed(4);
  }}
  document.getElementById("overlay").src = "data:image/png;base64," + data.overlay_png;
  result.hidden = false;
}});
</script></body></html>
"""


def create_app(pred: Predictor, max_bytes: int = 20 * 2**20, method: str = "gradcam") -> FastAPI:
    app = FastAPI(title="medtl", docs_url=None, redoc_url=None)
    lock = threading.Lock()  # one model: CAM hooks and gradients are not safe to share between requests
    page = PAGE.format(title=html.escape(pred.backbone), classes=html.escape(", ".join(pred.classes)),
                       threshold=f"{pred.threshold:.3f}" if pred.binary else "argmax")

    @app.middleware("http")
    async def refuse_large(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes + 64 * 1024:
            return JSONResponse({"detail": _too_large(int(length), max_bytes)}, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict:
        return {"backbone": pred.backbone, "classes": pred.classes, "threshold": pred.threshold,
                "image_size": pred.size, "max_bytes": max_bytes}

    @app.post("/api/predict")
    async def predict(file: UploadFile) -> JSONResponse:
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            return JSONResponse({"detail": _too_large(len(data), max_bytes)}, status_code=413)
        try:
            img = open_upload(data, pred.decoding.window)
        except ValueError:
            return JSONResponse({"detail": f"'{file.filename}' is not an image or DICOM file medtl can read; upload "
                                           "a PNG, JPEG, TIFF, BMP or DICOM image"}, status_code=415)
        with lock:
            return JSONResponse(_answer(pred, img, method))

    return app


def _too_large(size: int, limit: int) -> str:
    return f"the upload is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:.1f} MiB (medtl serve --max-mb)"


def _answer(pred: Predictor, img: Image.Image, method: str) -> dict:
    pixels = pred.pixels(img)
    probs = pred.probabilities(pixels[None])
    k = int(pred.decide(probs)[0])
    maps, _ = cams(pred, pixels[None], method, classes=np.array([k]))
    buf = io.BytesIO()
    Image.fromarray(overlay(pixels, maps[0])).save(buf, format="PNG")
    return {"predicted": pred.classes[k], "probabilities": dict(zip(pred.classes, map(float, probs[0]))),
            "threshold": pred.threshold, "overlay_png": base64.b64encode(buf.getvalue()).decode("ascii")}
