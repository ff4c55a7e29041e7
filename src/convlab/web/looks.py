"""'Where it looks' for the teach preview: a Grad-CAM map of one frame with a project's
latest model (its backbone and head as `convlab predict` loads them), computed by
convlab.analysis.attribution. The page lays the map over the frame.
"""
from __future__ import annotations

import threading
import time

import torch

from ..errors import ConfigError, NotFound
from .store import Store, canonical_image

__all__ = ["WhereItLooks", "covered_box"]


def covered_box(preprocess, height: int, width: int) -> list[float]:
    """[top, left, height, width], as fractions of a height x width frame, of the part
    the model sees: its preprocessing may crop the centre (ImageNet's 224 of 256)."""
    if preprocess.resize != "shorter_crop":
        return [0.0, 0.0, 1.0, 1.0]
    h, w = preprocess.size
    scale = min(h, w) / preprocess.crop_fraction / min(height, width)
    rh, rw = max(h, round(height * scale)), max(w, round(width * scale))
    return [((rh - h) // 2) / rh, ((rw - w) // 2) / rw, h / rh, w / rw]


class WhereItLooks:
    """Grad-CAM maps of frames with each project's latest model (one at a time: captum's
    hooks go on the shared model)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._model: tuple[int, object, object, str] | None = None   # (model id, twin, pre, layer)

    def _load(self, pid: int):
        from ..analysis.attribution import attribution_copy, cam_layer, check_spatial_layer
        from ..checkpoint import load_run

        model = self.store.latest_model(pid)
        if model is None:
            self.store.project(pid)
            raise NotFound(f"project {pid} has no trained model yet; train it first")
        if self._model is None or self._model[0] != model["id"]:
            run = load_run(self.store.model_dir / str(model["id"]))
            if run.meta.get("head", {}).get("kind") == "knn":
                raise ConfigError("a kNN head votes by its nearest neighbours, which gives no "
                                  "gradient to follow; train a linear or mlp head to see where "
                                  "it looks")
            twin = attribution_copy(run.model)
            pre = run.preprocess
            shape = (pre.channels, *pre.size)
            layer = cam_layer(twin, shape)
            # checked once per model here; each map then skips the check (a trace of the
            # whole model, several times the cost of the map itself)
            check_spatial_layer(twin, shape, layer, "Grad-CAM maps")
            self._model = (model["id"], twin, pre, layer)
        return self._model, model["classes"]

    def explain(self, pid: int, data: bytes, target: int | None = None) -> dict:
        """The evidence map (h x w, 0..1) for the predicted class (or `target`) of one
        frame, the part of the frame it covers, and the prediction."""
        from ..analysis.attribution import grad_cam

        t0 = time.perf_counter()
        img = canonical_image(data, self.store.limits)[None]          # (1, 3, 256, 256)
        with self._lock:
            (mid, twin, pre, layer), classes = self._load(pid)
            if target is not None and not 0 <= target < len(classes):
                raise ConfigError(f"class index must be in 0..{len(classes) - 1}; got {target}")
            x = pre(img)
            with torch.no_grad():
                probs = twin(x).float().softmax(1)[0]                  # (K,)
            chosen = int(probs.argmax()) if target is None else target
            cam = grad_cam(twin, x, [chosen], layer=layer, checked=True).maps[0]   # (h, w)
        cam = cam / cam.max().clamp_min(1e-12)
        return {"model_id": mid, "classes": classes, "class": classes[chosen],
                "top": classes[int(probs.argmax())],
                "probs": [round(float(p), 4) for p in probs], "layer": layer,
                "map": [[round(v, 3) for v in row] for row in cam.tolist()],
                "box": covered_box(pre, *img.shape[-2:]),
                "ms": round((time.perf_counter() - t0) * 1000, 1)}
