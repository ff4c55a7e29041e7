"""The teach web app: a JSON API (documented at /docs) and the static UI that uses it.

Endpoints that compute (uploads, training, prediction, export) are plain `def`
functions, so FastAPI runs them in its thread pool and the event loop stays free;
training runs in its own thread per project (see learn.Jobs).
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path, PurePosixPath

import torch
from fastapi import APIRouter, Body, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .._version import __version__
from ..files import cache_root
from ..errors import (ConfigError, Conflict, ConvlabError, DatasetError, NotFound, TooLarge,
                      UnsupportedImage, unknown)
from .learn import (HEADS, IMAGENET_MODEL, ImagenetPreview, Jobs, OnnxBackbones, Previewer,
                    TorchBackbone, TrainOptions, export_project)
from .looks import WhereItLooks
from .security import Guard
from .store import DEFAULT_BACKBONE, Limits, Store, check_name, uploaded_image

__all__ = ["create_app", "HTTP_STATUS", "http_status", "FaceDetection"]

# The HTTP answer to each kind of error; a subclass takes its nearest listed ancestor's.
HTTP_STATUS: dict[type[ConvlabError], int] = {
    ConvlabError: 400, NotFound: 404, Conflict: 409, TooLarge: 413, UnsupportedImage: 415,
}

STATIC = Path(__file__).parent / "static"
_SHA = re.compile(r"[0-9a-f]{64}")
SOURCES = ("webcam", "upload", "import")
DETECT_SIZE = 320     # the Detect view's default: a 320x240 frame runs as 320x256
DETECT_SCORE = 0.5


def http_status(exc: ConvlabError) -> int:
    """The status code HTTP_STATUS gives `exc`'s class or its nearest ancestor there."""
    return next(HTTP_STATUS[c] for c in type(exc).__mro__ if c in HTTP_STATUS)


async def _files_from(request: Request, field: str = "files") -> list[tuple[str, bytes]]:
    """(client file name, bytes) of every file in a multipart form field."""
    form = await request.form()
    out = []
    for item in form.getlist(field):
        if hasattr(item, "read"):
            out.append((item.filename or "", await item.read()))
    return out


async def _image_from(request: Request) -> bytes:
    """One image: the raw request body, or the multipart field 'file'."""
    if request.headers.get("content-type", "").startswith("multipart/"):
        files = await _files_from(request, "file")
        return files[0][1] if files else b""
    return await request.body()


def create_app(home: str | Path, *, token: str | None = None, hosts: set[str] | None = None,
               limits: Limits = Limits(), fast_preview: bool = True) -> FastAPI:
    """The teach app storing everything under `home`.

    token: required on every request when given; hosts: the Host header values the
    app answers to (None: any, for the test client); limits: upload limits;
    fast_preview: export each backbone to ONNX once (in the background, the default one
    at start-up, the others when first used) and predict with ONNX Runtime (eager torch
    until it is ready, or without it).
    """
    store = Store(home, limits)
    recovered = store.recover()
    torch_backbone = TorchBackbone(store.embedding_dir)
    jobs = Jobs(store, torch_backbone)
    backbone = OnnxBackbones(cache_root() / "onnx") if fast_preview else None
    if backbone is not None:
        backbone.get(DEFAULT_BACKBONE)  # starts its export now: most projects use it
    previewer = Previewer(store, backbone, torch_backbone)
    imagenet = ImagenetPreview(limits)
    looks = WhereItLooks(store)
    faces = FaceDetection(limits)

    # FastAPI's own /docs pages load their scripts from a CDN; this app works offline, so
    # /docs is a small page of ours that renders /openapi.json.
    app = FastAPI(title="convlab teach", version=__version__, docs_url=None, redoc_url=None,
                  description="Teach an image classifier from your webcam or files; everything "
                              "stays on this machine. The UI at / uses exactly this API.")
    app.state.store, app.state.jobs, app.state.previewer = store, jobs, previewer
    app.state.backbone, app.state.imagenet, app.state.faces = backbone, imagenet, faces
    app.state.recovered = recovered

    @app.exception_handler(ConvlabError)
    async def convlab_error(request: Request, exc: ConvlabError):
        return JSONResponse({"detail": str(exc)}, status_code=http_status(exc))

    for routes in (_info_routes(limits), _project_routes(store, jobs), _sample_routes(store),
                   _training_routes(store, jobs, previewer), _imagenet_routes(imagenet),
                   _looks_routes(looks), _detect_routes(faces), _export_routes(store),
                   _ui_routes()):
        app.include_router(routes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard, hosts=hosts, token=token, max_body=limits.request_bytes)
    return app


def _info_routes(limits: Limits) -> APIRouter:
    """Version, backbone, heads and upload limits."""
    router = APIRouter()

    @router.get("/api/info", summary="Version, backbones, heads and upload limits")
    def info() -> dict:
        return {"version": __version__, "backbone": DEFAULT_BACKBONE, "backbones": _backbones(),
                "imagenet_model": IMAGENET_MODEL, "heads": list(HEADS),
                "defaults": TrainOptions().__dict__,
                "limits": {"file_bytes": limits.file_bytes, "pixels": limits.pixels,
                           "request_bytes": limits.request_bytes}}

    return router


def _project_routes(store: Store, jobs: Jobs) -> APIRouter:
    """Projects and their classes."""
    router = APIRouter()

    @router.get("/api/projects", summary="All projects with class and sample counts")
    def list_projects() -> list[dict]:
        return store.projects()

    @router.post("/api/projects", status_code=201, summary="Create a project",
                 description="`backbone`: one of the offline backbones of GET /api/info "
                             f"(default {DEFAULT_BACKBONE}); its features are what the "
                             "project's models train on.")
    def create_project(name: str = Body(..., embed=True),
                       backbone: str = Body(DEFAULT_BACKBONE, embed=True)) -> dict:
        return store.create_project(name, backbone)

    @router.get("/api/projects/{pid}", summary="A project with its classes and latest model")
    def get_project(pid: int) -> dict:
        out = store.project(pid)
        out["model"] = store.latest_model(pid)
        out["training"] = jobs.status(pid)
        return out

    @router.patch("/api/projects/{pid}", summary="Rename a project or switch its backbone",
                  description="`name` and/or `backbone`. Another backbone applies from the next "
                              "training on (its own embeddings, computed then); models trained "
                              "before keep the backbone they were trained on.")
    def change_project(pid: int, name: str | None = Body(None, embed=True),
                       backbone: str | None = Body(None, embed=True)) -> dict:
        if name is None and backbone is None:
            raise ConfigError("nothing to change: send 'name' and/or 'backbone'")
        out = store.project(pid)
        if name is not None:
            out = store.rename_project(pid, name)
        if backbone is not None:
            out = store.set_backbone(pid, backbone)
        return out

    @router.delete("/api/projects/{pid}", status_code=204, summary="Delete a project and its samples")
    def delete_project(pid: int) -> Response:
        store.delete_project(pid)
        return Response(status_code=204)

    @router.post("/api/projects/{pid}/classes", status_code=201, summary="Add a class")
    def add_class(pid: int, name: str = Body(..., embed=True)) -> dict:
        return store.add_class(pid, name)

    @router.patch("/api/classes/{cid}", summary="Rename a class")
    def rename_class(cid: int, name: str = Body(..., embed=True)) -> dict:
        return store.rename_class(cid, name)

    @router.delete("/api/classes/{cid}", status_code=204, summary="Delete a class and its samples")
    def delete_class(cid: int) -> Response:
        store.delete_class(cid)
        return Response(status_code=204)

    return router


def _sample_routes(store: Store) -> APIRouter:
    """Samples: uploads, folder imports, stored images."""
    router = APIRouter()

    @router.get("/api/classes/{cid}/samples", summary="A class's samples, newest first")
    def list_samples(cid: int, limit: int = 60, offset: int = 0) -> list[dict]:
        return store.samples(cid, min(max(limit, 1), 1000), max(offset, 0))

    @router.post("/api/classes/{cid}/samples", status_code=201,
              summary="Add image files (multipart field 'files', many at once)",
              description="JPEG, PNG, WebP or GIF (first frame), judged by content. "
                          "?source=webcam|upload|import records where they came from.")
    async def add_samples(cid: int, request: Request, source: str = "upload") -> list[dict]:
        if source not in SOURCES:
            raise ConfigError(unknown("source", source, SOURCES))
        files = await _files_from(request)
        if not files:
            raise DatasetError("no files in the request; send them as multipart field 'files'")
        return await run_in_threadpool(store.add_samples, cid, [d for _, d in files], source)

    @router.post("/api/projects/{pid}/import", status_code=201,
              summary="Import a folder of class folders",
              description="Multipart field 'files' whose file names are relative paths "
                          "'CLASS/…/image'; the first folder names the class (created when "
                          "missing). Names never become paths on the server.")
    async def import_folder(pid: int, request: Request) -> dict:
        await run_in_threadpool(store.project, pid)  # 404 for a project that does not exist
        files = await _files_from(request)
        groups: dict[str, list[bytes]] = {}
        for name, data in files:
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if len(parts) < 2:
                raise DatasetError(f"file {name!r} is not inside a class folder; expected "
                                   f"CLASS/image.jpg")
            groups.setdefault(check_name(parts[0], "class"), []).append(data)

        def work() -> dict:
            existing = {c["name"]: c["id"] for c in store.classes(pid)}
            added = {}
            for cls, datas in groups.items():
                cid = existing.get(cls) or store.add_class(pid, cls)["id"]
                added[cls] = len(store.add_samples(cid, datas, "import"))
            return {"added": added}
        return await run_in_threadpool(work)

    @router.delete("/api/samples/{sid}", status_code=204, summary="Delete a sample")
    def delete_sample(sid: int) -> Response:
        store.delete_sample(sid)
        return Response(status_code=204)

    @router.get("/api/images/{sha}", summary="A stored sample image (JPEG, 256x256)")
    def image(sha: str) -> FileResponse:
        if not _SHA.fullmatch(sha) or not store.blob_path(sha).exists():
            raise NotFound(f"no image {sha[:70]!r}")
        return FileResponse(store.blob_path(sha), media_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=31536000, immutable"})

    return router


def _training_routes(store: Store, jobs: Jobs, previewer: Previewer) -> APIRouter:
    """Training jobs, their models, and the live preview."""
    router = APIRouter()

    @router.post("/api/projects/{pid}/train", status_code=202,
              summary="Start training (refused with 409 while one runs for this project)")
    def train(pid: int, options: dict = Body(default={})) -> dict:
        opts = TrainOptions.from_dict(options)
        store.project(pid)
        return jobs.start(pid, opts).to_dict()

    @router.get("/api/projects/{pid}/training", summary="Live state of the latest training job")
    def training(pid: int) -> dict:
        store.project(pid)
        status = jobs.status(pid)
        model = store.latest_model(pid)
        return {"job": status, "model": model}

    @router.get("/api/projects/{pid}/models", summary="Every model trained for the project")
    def models(pid: int) -> list[dict]:
        store.project(pid)
        return store.models(pid)

    @router.post("/api/projects/{pid}/predict", summary="Classify one image",
              description="The image as the raw request body (image/jpeg, png, webp, gif) or "
                          "as multipart field 'file'.")
    async def predict(pid: int, request: Request) -> dict:
        return await run_in_threadpool(previewer.predict, pid, await _image_from(request))

    return router


def _imagenet_routes(imagenet: ImagenetPreview) -> APIRouter:
    """ImageNet labels of an image, for the preview before a project has a model."""
    router = APIRouter()

    @router.post("/api/imagenet", summary="ImageNet top labels of one image (MobileNetV2)",
                 description="The image as the raw request body or as multipart field 'file'; "
                             "?top=N labels (default 5). The lecture's Cozmo demo: the "
                             "preview shows this while a project has no trained model.")
    async def imagenet_labels(request: Request, top: int = 5) -> dict:
        return await run_in_threadpool(imagenet.predict, await _image_from(request), top)

    return router


def _looks_routes(looks: WhereItLooks) -> APIRouter:
    """Where the project's model looks in an image (the preview's toggle)."""
    router = APIRouter()

    @router.post("/api/projects/{pid}/looks", summary="Where the model looks in one image",
                 description="The image as the raw request body or as multipart field 'file'. "
                             "The prediction (as /predict gives it) and a Grad-CAM map of the "
                             "evidence for the predicted class (or ?target=INDEX): 'map' (rows "
                             "of 0..1), 'box' (top, left, height, width of the part of the "
                             "image it covers, as fractions), 'layer'.")
    async def where_it_looks(pid: int, request: Request, target: int | None = None) -> dict:
        return await run_in_threadpool(looks.explain, pid, await _image_from(request), target)

    return router


class FaceDetection:
    """The Detect view's face detector (`convlab.detect`'s tiny_face: the lecture's
    TinyYOLOv2 with face-api's weights), loaded on the first request and shared by all
    (the Detector serialises its runs). ONNX Runtime on one thread, as the preview's
    backbones run; eager torch when the ONNX export or session fails (`fallback` says
    why)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._detector = None
        self.fallback = ""

    def detector(self):
        """The detector, loaded now if need be. A missing or damaged face-api package
        raises its ConvlabError every time, so installing it needs no restart."""
        from ..detect import load_detector

        with self._lock:
            if self._detector is None:
                try:
                    det = load_detector("tiny_face", size=DETECT_SIZE, backend="onnx", threads=1)
                except ConvlabError:
                    raise
                except Exception as exc:  # onnx or onnxruntime failed: torch runs the same net
                    self.fallback = f"{type(exc).__name__}: {exc}"
                    det = load_detector("tiny_face", size=DETECT_SIZE, backend="torch")
                # ONNX Runtime plans memory on a shape's first run (seconds, not ms): do it
                # for a webcam frame now, not on the user's first frame
                det.detect(torch.zeros(3, 240, 320, dtype=torch.uint8))
                self._detector = det
            return self._detector

    def detect(self, img: torch.Tensor, *, size: int = DETECT_SIZE,
               score: float = DETECT_SCORE) -> dict:
        """The faces in one image, uint8 (3, H, W), in its pixels, with the detection's time."""
        det = self.detector()
        t0 = time.perf_counter()
        boxes = det.detect(img, size=size, score=score)
        ms = (time.perf_counter() - t0) * 1000
        return {"boxes": [b.to_dict() for b in boxes], "width": img.shape[2],
                "height": img.shape[1], "ms": round(ms, 1), "size": size, "score": score,
                "engine": "onnxruntime" if det.backend == "onnx" else "torch"}


def _detect_routes(faces: FaceDetection) -> APIRouter:
    """Faces in an image (the Detect view, live on the webcam)."""
    router = APIRouter()

    @router.post("/api/detect", summary="The faces in one image (TinyYOLOv2, face-api's weights)",
                 description="The image as the raw request body or as multipart field 'file'. "
                             f"?score=MIN (0..1, default {DETECT_SCORE}) keeps boxes scoring at "
                             f"least that; ?size=N (a multiple of 32, default {DETECT_SIZE}) "
                             "scales the image so its longer side is N pixels for the network. "
                             "'boxes': [{'box': [x1, y1, x2, y2] in the image's pixels, "
                             "'score', 'label'}], best first; 'width', 'height' of the image; "
                             "'ms' the detection's time on the server. 503 when the face "
                             "detector's weights are not installed.")
    async def detect(request: Request, score: float = DETECT_SCORE,
                     size: int = DETECT_SIZE) -> dict:
        from ..detect import check_options
        from ..tasks.detection import DEFAULT_IOU

        check_options(size, score, DEFAULT_IOU)
        data = await _image_from(request)

        def work() -> dict:
            img = uploaded_image(data, faces.limits)                 # (3, H, W)
            try:   # after the request's own faults (4xx): the server's (503)
                faces.detector()
            except ConvlabError as exc:   # the weights are missing or damaged
                raise HTTPException(503, f"the face detector is not available: {exc}") from None
            return faces.detect(img, size=size, score=score)
        return await run_in_threadpool(work)

    return router


def _backbones() -> list[dict]:
    """The offline backbones a project can choose: input size and published accuracy."""
    from ..models import list_pretrained, model_spec

    out = []
    for name in list_pretrained():
        spec = model_spec(name)
        top1, top5, _ = spec.bundled.accuracy()
        out.append({"name": name, "input_size": spec.input_size, "top1": top1, "top5": top5})
    return out


def _export_routes(store: Store) -> APIRouter:
    """Exporting a project's latest model and data, and downloading them."""
    router = APIRouter()

    @router.post("/api/projects/{pid}/export", summary="Export the latest model and the dataset",
              description="Writes HOME/exports/project-P-model-M/ with run/ (for `convlab "
                          "predict` and `convlab evaluate`), model.onnx (preprocessing in its "
                          "metadata) and dataset.zip (one folder per class).")
    def export(pid: int) -> dict:
        out = export_project(store, pid)
        base = f"/api/projects/{pid}/export/{out['model_id']}"
        out["downloads"] = {"run.zip": f"{base}/run.zip", "model.onnx": f"{base}/model.onnx",
                            "dataset.zip": f"{base}/dataset.zip"}
        return out

    @router.get("/api/projects/{pid}/export/{mid}/{name}", summary="Download an exported file")
    def download(pid: int, mid: int, name: str):
        folder = store.home / "exports" / f"project-{pid}-model-{mid}"
        if name not in ("run.zip", "model.onnx", "dataset.zip") or not folder.is_dir():
            raise NotFound(f"no export {name!r} for project {pid}, model {mid}; POST "
                           f"/api/projects/{pid}/export first")
        if name == "run.zip":
            import io
            import zipfile
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in sorted((folder / "run").iterdir()):
                    zf.write(f, f"project-{pid}-model-{mid}/{f.name}")
            return Response(buf.getvalue(), media_type="application/zip", headers={
                "Content-Disposition": f'attachment; filename="project-{pid}-model-{mid}-run.zip"'})
        return FileResponse(folder / name, filename=f"project-{pid}-model-{mid}-{name}")

    return router


def _ui_routes() -> APIRouter:
    """The page and the offline API docs."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def index(request: Request):
        if "token" in request.query_params:  # the cookie is set by the guard; drop the token
            return RedirectResponse("/", status_code=303)
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @router.get("/docs", include_in_schema=False)
    def docs():
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    return router
