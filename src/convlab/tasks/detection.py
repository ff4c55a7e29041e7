"""Object detection, YOLOv2-style: targets are boxes per image, the network outputs a
grid of anchor boxes, the loss is darknet's region loss, the metric is COCO mAP.

Targets of a batch are one float tensor (N, M, 5): rows [class, cx, cy, w, h] with the
box in 0..1 of the input image, padded with rows of class -1 (an image with no row is
a negative). The network's output (N, A x (5 + C), H, W) holds, per anchor a and cell
(i, j), [tx, ty, tw, th, objectness, C class scores] (one class: no class score):

    cx = (j + sigmoid(tx)) / W     w = anchor_w x exp(tw) / W     score = sigmoid(obj)
    cy = (i + sigmoid(ty)) / H     h = anchor_h x exp(th) / H       x softmax(class)

as darknet's region layer and face-api's TinyYolov2Base.extractBoxes decode it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import DatasetError

__all__ = ["DetectionTask", "DetectionResult", "Detections", "RegionLoss", "BoxJitter", "decode_grid",
           "kmeans_anchors", "DEFAULT_IOU", "DEFAULT_SCORE"]

DEFAULT_SCORE = 0.5   # a box is shown from this score on
DEFAULT_IOU = 0.4     # face-api's non-maximum suppression threshold
EVAL_SCORE = 0.005    # mAP ranks every box down to this score


@dataclass
class Detections:
    """One image's boxes: xyxy (K, 4) in 0..1 of the input, scores (K,), labels (K,)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


@dataclass
class DetectionResult:
    """COCO mAP of a whole set (torchmetrics MeanAveragePrecision) and the mean loss."""

    n: int
    loss: float
    map50: float
    map50_95: float
    ap50: dict[str, float] = field(default_factory=dict)   # per class
    classes: list[str] = field(default_factory=list)

    headline = "mAP50"

    @property
    def score(self) -> float:
        """The number the epoch line and early stopping follow (higher is better)."""
        return self.map50

    def epoch_extras(self) -> dict:
        """Numbers for the epoch line besides val_loss and the score (mAP50)."""
        return {"val_mAP50-95": self.map50_95}

    def summary(self) -> dict:
        """The test entry of a run's meta.json."""
        return {"mAP50": self.map50, "mAP50_95": self.map50_95, "loss": self.loss, "n": self.n}

    def to_dict(self) -> dict:
        return {**self.summary(), "ap50": self.ap50, "classes": self.classes}


def _split(output: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """(N, A x D, H, W) -> (N, A, H, W, D)."""
    n, ch, h, w = output.shape
    return output.view(n, num_anchors, ch // num_anchors, h, w).permute(0, 1, 3, 4, 2)


def _boxes(p: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Predicted boxes (N, A, H, W, 4) as cx, cy, w, h in 0..1 of the input."""
    _, _, h, w, _ = p.shape
    gy, gx = torch.meshgrid(torch.arange(h, device=p.device, dtype=p.dtype),
                            torch.arange(w, device=p.device, dtype=p.dtype), indexing="ij")
    cx = (gx + p[..., 0].sigmoid()) / w
    cy = (gy + p[..., 1].sigmoid()) / h
    bw = anchors[:, 0].view(1, -1, 1, 1) * p[..., 2].clamp(max=8).exp() / w
    bh = anchors[:, 1].view(1, -1, 1, 1) * p[..., 3].clamp(max=8).exp() / h
    return torch.stack([cx, cy, bw, bh], -1)


def _iou_cxcywh(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes a (..., P, 4) against b (..., M, 4), both cx, cy, w, h -> (..., P, M)."""
    a1, a2 = a[..., None, :2] - a[..., None, 2:] / 2, a[..., None, :2] + a[..., None, 2:] / 2
    b1, b2 = b[..., None, :, :2] - b[..., None, :, 2:] / 2, b[..., None, :, :2] + b[..., None, :, 2:] / 2
    inter = (torch.minimum(a2, b2) - torch.maximum(a1, b1)).clamp(min=0).prod(-1)
    union = a[..., None, 2:].prod(-1) + b[..., None, :, 2:].prod(-1) - inter
    return inter / union.clamp(min=1e-12)


class RegionLoss(nn.Module):
    """darknet's YOLOv2 region loss (region_layer.c, yolov2-tiny-voc.cfg), summed over the
    grid and averaged over the images of the batch:

    - every anchor box whose best IoU with a true box is below `thresh` (0.6) is pushed
      towards objectness 0 (noobject_scale 1);
    - each true box is given to the anchor of its centre cell whose shape fits it best;
      that anchor learns the box (coord_scale 1, weighted 2 - w x h so small boxes
      count more), objectness equal to its current IoU with the box (rescore,
      object_scale 5) and, with several classes, the class: cross-entropy on the class
      scores (darknet takes the squared error of the softmax, which learns ten digit
      classes several times slower here).
    """

    def __init__(self, anchors, num_classes: int, *, object_scale: float = 5.0,
                 noobject_scale: float = 1.0, coord_scale: float = 1.0,
                 class_scale: float = 1.0, thresh: float = 0.6) -> None:
        super().__init__()
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32), persistent=False)
        self.num_classes = num_classes
        self.object_scale, self.noobject_scale = object_scale, noobject_scale
        self.coord_scale, self.class_scale, self.thresh = coord_scale, class_scale, thresh

    def forward(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        output = output.float()
        anchors = self.anchors.to(output.device)
        a = len(anchors)
        p = _split(output, a)                                    # (N, A, H, W, D)
        n, _, h, w, _ = p.shape
        pred = _boxes(p, anchors)                                # (N, A, H, W, 4)
        obj = p[..., 4].sigmoid()
        valid = targets[..., 0] >= 0                             # (N, M)
        gt = targets[..., 1:5].float()
        # objectness 0 wherever no true box overlaps enough
        if targets.shape[1]:
            ious = _iou_cxcywh(pred.detach().view(n, -1, 4), gt)  # (N, A*H*W, M)
            ious = ious.masked_fill(~valid[:, None, :], 0)
            best = ious.max(-1).values.view(n, a, h, w)
        else:
            best = torch.zeros_like(obj)
        noobj = (best < self.thresh).float()
        obj_target = torch.zeros_like(obj)
        obj_weight = self.noobject_scale * noobj
        loss = torch.zeros((), device=output.device)
        bi, mi = valid.nonzero(as_tuple=True)
        if len(bi):
            box = gt[bi, mi]                                     # (T, 4)
            cls = targets[bi, mi, 0].long()
            j = (box[:, 0] * w).long().clamp(0, w - 1)
            i = (box[:, 1] * h).long().clamp(0, h - 1)
            # the anchor whose shape (centred on the box) overlaps it most
            shapes = torch.cat([torch.zeros_like(anchors), anchors / torch.tensor(
                [w, h], device=anchors.device)], 1)
            centred = torch.cat([torch.zeros_like(box[:, :2]), box[:, 2:]], 1)
            k = _iou_cxcywh(centred, shapes).argmax(1)           # (T,)
            cell = p[bi, k, i, j]                                # (T, D)
            tx = box[:, 0] * w - j
            ty = box[:, 1] * h - i
            tw = torch.log(box[:, 2] * w / anchors[k, 0]).clamp(min=-8)
            th = torch.log(box[:, 3] * h / anchors[k, 1]).clamp(min=-8)
            scale = self.coord_scale * (2 - box[:, 2] * box[:, 3])
            loss = loss + (scale * ((cell[:, 0].sigmoid() - tx) ** 2 + (cell[:, 1].sigmoid() - ty) ** 2
                                    + (cell[:, 2] - tw) ** 2 + (cell[:, 3] - th) ** 2)).sum()
            iou = _iou_cxcywh(pred[bi, k, i, j].detach()[:, None], box[:, None])[:, 0, 0]
            obj_target[bi, k, i, j] = iou
            obj_weight[bi, k, i, j] = self.object_scale
            if self.num_classes > 1:
                loss = loss + self.class_scale * torch.nn.functional.cross_entropy(
                    cell[:, 5:], cls, reduction="sum")
        loss = loss + (obj_weight * (obj - obj_target) ** 2).sum()
        return loss / max(n, 1)


class BoxJitter:
    """darknet's detection augmentation (jitter=.2 in yolov2-tiny-voc.cfg): each
    training image is zoomed by a random factor in 1 +- jitter and shifted by up to
    `jitter` of its side, its boxes moved with it (cut at the border; a box left with
    less than 40% of its area is dropped), and with probability `hflip` mirrored;
    `then` (colour augmentation of the images alone) follows. Applied to the 0..1 batch before normalisation; empty space is black, as the
    letterbox's padding."""

    with_targets = True  # Batches passes the box targets along

    def __init__(self, jitter: float = 0.2, hflip: float = 0.0, then=None) -> None:
        self.jitter, self.hflip, self.then = jitter, hflip, then

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch.nn.functional as F

        b = len(x)
        dev = x.device
        s = 1 + (torch.rand(b, device=dev) * 2 - 1) * self.jitter             # zoom
        t = (torch.rand(b, 2, device=dev) * 2 - 1) * self.jitter               # shift, of the side
        f = torch.where(torch.rand(b, device=dev) < self.hflip, -1.0, 1.0)     # mirror
        # output = s * F(input) + 2t in -1..1 units  =>  input = F((output - 2t) / s)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 1, 1] = f / s, 1 / s
        theta[:, 0, 2], theta[:, 1, 2] = -f * 2 * t[:, 0] / s, -2 * t[:, 1] / s
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = targets.clone()
        valid = y[..., 0] >= 0
        cx = (s[:, None] * f[:, None] * (2 * y[..., 1] - 1) + 2 * t[:, :1] + 1) / 2
        cy = (s[:, None] * (2 * y[..., 2] - 1) + 2 * t[:, 1:] + 1) / 2
        w, h = y[..., 3] * s[:, None], y[..., 4] * s[:, None]
        x1, x2 = (cx - w / 2).clamp(0, 1), (cx + w / 2).clamp(0, 1)
        y1, y2 = (cy - h / 2).clamp(0, 1), (cy + h / 2).clamp(0, 1)
        kept = (x2 - x1) * (y2 - y1) >= 0.4 * w * h
        y[..., 1], y[..., 2] = (x1 + x2) / 2, (y1 + y2) / 2
        y[..., 3], y[..., 4] = x2 - x1, y2 - y1
        y[valid & ~kept] = -1.0
        if self.then is not None:  # colour changes, which leave the boxes where they are
            x = self.then(x)
        return x, y


def decode_grid(output: torch.Tensor, anchors, num_classes: int, *, score: float = DEFAULT_SCORE,
                iou: float = DEFAULT_IOU, max_boxes: int = 100) -> list[Detections]:
    """The network's grid -> each image's boxes above `score`, after per-class
    non-maximum suppression at `iou` (torchvision.ops.batched_nms)."""
    from torchvision.ops import batched_nms, box_convert

    anchors = torch.as_tensor(anchors, dtype=torch.float32, device=output.device)
    p = _split(output.float(), len(anchors))
    boxes = box_convert(_boxes(p, anchors), "cxcywh", "xyxy").flatten(1, 3)   # (N, AHW, 4)
    scores = p[..., 4].sigmoid().flatten(1)
    if num_classes > 1:
        cls_prob, labels = p[..., 5:].softmax(-1).max(-1)
        scores = scores * cls_prob.flatten(1)
        labels = labels.flatten(1)
    else:
        labels = torch.zeros_like(scores, dtype=torch.int64)
    out = []
    for b, s, lab in zip(boxes, scores, labels):
        keep = s > score
        b, s, lab = b[keep], s[keep], lab[keep]
        kept = batched_nms(b, s, lab, iou)[:max_boxes]
        out.append(Detections(b[kept], s[kept], lab[kept]))
    return out


def kmeans_anchors(wh: torch.Tensor, k: int = 5, *, iters: int = 100, seed: int = 0) -> torch.Tensor:
    """YOLOv2's anchor shapes: k-means on the training boxes' (w, h) with distance
    1 - IoU (boxes sharing a centre). wh in grid cells -> (k, 2), sorted by area."""
    if len(wh) < k:
        raise DatasetError(f"k-means anchors need at least {k} boxes; the training data has "
                           f"{len(wh)}")
    gen = torch.Generator().manual_seed(seed)
    centres = wh[torch.randperm(len(wh), generator=gen)[:k]].clone()

    def assign(c: torch.Tensor) -> torch.Tensor:
        inter = torch.minimum(wh[:, None], c[None]).prod(-1)
        iou = inter / (wh.prod(-1)[:, None] + c.prod(-1)[None] - inter)
        return iou.argmax(1)

    for _ in range(iters):
        nearest = assign(centres)
        new = torch.stack([wh[nearest == c].median(0).values if (nearest == c).any() else centres[c]
                           for c in range(k)])
        if torch.allclose(new, centres):
            break
        centres = new
    return centres[centres.prod(1).argsort()]


class _MapMeter:
    """COCO mAP over a whole set with torchmetrics' MeanAveragePrecision. Each process
    keeps its images' boxes; `result` gathers them (convlab's gather, which knows when
    a process evaluates alone) and computes once, so torchmetrics never syncs by itself."""

    def __init__(self, task: DetectionTask, classes: list[str]) -> None:
        self.task, self.classes = task, list(classes)
        self.preds: list[dict] = []
        self.truths: list[dict] = []

    def update(self, output: torch.Tensor, targets: torch.Tensor) -> None:
        from torchvision.ops import box_convert

        h, w = output.shape[-2] * 32, output.shape[-1] * 32  # boxes in input pixels
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        dets = decode_grid(output, self.task.anchors, self.task.num_classes, score=EVAL_SCORE,
                           iou=0.5)
        for d, t in zip(dets, targets.cpu()):
            t = t[t[:, 0] >= 0]
            self.preds.append({"boxes": d.boxes.cpu() * scale, "scores": d.scores.cpu(),
                               "labels": d.labels.cpu()})
            self.truths.append({"boxes": box_convert(t[:, 1:5].float(), "cxcywh", "xyxy") * scale,
                                "labels": t[:, 0].long()})

    def result(self, loss_sum: float, reduce, gather) -> DetectionResult:
        from torchmetrics.detection import MeanAveragePrecision

        totals = reduce(torch.tensor([loss_sum, float(len(self.preds))], dtype=torch.float64))
        n = int(totals[1])
        if n == 0:
            return DetectionResult(0, 0.0, 0.0, 0.0, {}, self.classes)
        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", extended_summary=True,
                                      backend="faster_coco_eval", sync_on_compute=False)
        for preds, truths in gather((self.preds, self.truths)):
            metric.update(preds, truths)
        r = metric.compute()
        # precision (T iou thresholds, R recall points, K classes, areas, max dets): AP50 per
        # class is the mean over recall at IoU 0.5, all areas, 100 boxes (-1: no such class)
        prec = r["precision"][0, :, :, 0, -1]
        ids = r["classes"].view(-1).tolist()
        ap50 = {self.classes[c]: float(prec[:, k][prec[:, k] > -1].mean())
                for k, c in enumerate(ids) if 0 <= c < len(self.classes) and (prec[:, k] > -1).any()}
        return DetectionResult(n, float(totals[0]) / max(n, 1), max(float(r["map_50"]), 0.0),
                               max(float(r["map"]), 0.0), ap50, self.classes)


class DetectionTask:
    """YOLOv2 detection with `anchors` ((w, h) in grid cells) for `num_classes` classes."""

    name = "detection"

    def __init__(self, anchors, num_classes: int) -> None:
        self.anchors = tuple((float(a), float(b)) for a, b in anchors)
        self.num_classes = num_classes

    @classmethod
    def from_meta(cls, meta: dict) -> DetectionTask:
        from ..errors import CheckpointError

        anchors = meta.get("detection", {}).get("anchors")
        if not anchors:
            raise CheckpointError("a detection run's meta.json needs detection.anchors")
        return cls(anchors, len(meta.get("classes", [])) or 1)

    def meta(self) -> dict:
        """What a run's meta.json keeps of the task."""
        return {"anchors": [list(a) for a in self.anchors]}

    def check_config(self, config: TrainConfig) -> None:
        """Geometric augmentation would move the objects away from their boxes."""
        from ..errors import ConfigError

        a = config.augment
        moved = [n for n in ("crop", "resized_crop", "vflip", "translate", "rotate", "erase")
                 if getattr(a, n)]
        if moved:
            raise ConfigError(f"detection training zooms and shifts every image with its boxes "
                              f"(darknet's jitter 0.2) and may mirror them (--hflip); these move "
                              f"or hide pixels without their boxes: {', '.join(moved)}; valid "
                              f"for detection: --hflip, --jitter, --lighting")
        if config.loss != "cross-entropy" or config.label_smoothing:
            raise ConfigError("detection trains with the YOLOv2 region loss; --loss and "
                              "--label-smoothing are for classification")

    def image_augment(self, augment):
        """The part of the augmentation applied to the pixels alone: colour (jitter,
        lighting); the mirror moves boxes, so BoxJitter does it."""
        from dataclasses import replace

        return replace(augment, hflip=0.0)

    def augment(self, config: TrainConfig, image_augment=None) -> BoxJitter:
        """The training batches' augmentation: BoxJitter (with the config's hflip), then
        the colour augmentation."""
        return BoxJitter(0.2, config.augment.hflip, then=image_augment)

    def loss(self, config: TrainConfig) -> RegionLoss:
        return RegionLoss(self.anchors, self.num_classes)

    def check_targets(self, targets: torch.Tensor, num_classes: int, where: str) -> None:
        """Raise DatasetError unless `targets` are (N, M, 5) box rows for `num_classes`."""
        if targets.dim() != 3 or targets.shape[-1] != 5 or not targets.is_floating_point():
            raise DatasetError(f"{where}: detection needs float box targets of shape (N, M, 5); "
                               f"got {targets.dtype} {tuple(targets.shape)}")
        rows = targets[targets[..., 0] >= 0]
        if len(rows) and int(rows[:, 0].max()) >= num_classes:
            raise DatasetError(f"{where}: class ids must lie in 0..{num_classes - 1}; found "
                               f"{int(rows[:, 0].max())}")

    def train_counts(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.float64)  # mAP is measured on validation only

    def train_metrics(self, counts: torch.Tensor, n: int) -> dict[str, float]:
        return {}

    def evaluator(self, classes: list[str]) -> _MapMeter:
        return _MapMeter(self, classes)

    def decode(self, output: torch.Tensor, *, score: float = DEFAULT_SCORE,
               iou: float = DEFAULT_IOU) -> list[Detections]:
        """The grid -> each image's Detections (boxes in 0..1 of the input)."""
        return decode_grid(output, self.anchors, self.num_classes, score=score, iou=iou)
