"""Where a network looks: class-activation maps (Grad-CAM, occlusion), deconvnet
projections of single units, and the dataset patches that excite a unit most (Zeiler &
Fergus 2013). The methods are captum's (LayerGradCam, Occlusion, Deconvolution,
GuidedBackprop); this module picks the layer, the targets and the regions, and
returns tensors ready to draw (convlab.figures.explain draws them).

Every function here works on an attribution copy of the model (attribution_copy):
captum's backward hooks and layer hooks need activations that are not overwritten in
place, and the caller's module stays as it was.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, LayerReached, ModelError, unknown
from .layers import LayerStats, ReceptiveField, layer_kind, layer_stats

__all__ = ["METHODS", "PROJECTIONS", "ClassMaps", "TopPatches", "attribution_copy",
           "spatial_layers", "check_spatial_layer", "cam_layer", "class_maps", "grad_cam",
           "occlusion", "upsample_maps", "unit_projections", "top_patches", "crop_box"]

METHODS = ("gradcam", "occlusion")
PROJECTIONS = ("deconvnet", "guided")


def attribution_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with in-place activations turned off and no
    parameter asking for gradients. In-place changes only save memory, so the copy
    computes the same values; captum's hooks need the activations intact, and the
    gradients wanted here are with respect to activations and inputs only."""
    twin = copy.deepcopy(model).eval()
    for m in twin.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def _relu_like(module: nn.Module) -> bool:
    """ReLU and ReLU6 (MobileNet's and EfficientNet-Lite's): the activations whose
    backward the deconvnet and guided backprop rules replace."""
    return isinstance(module, (nn.ReLU, nn.ReLU6))


def _captum_relu_methods():
    """captum's Deconvolution and GuidedBackprop, extended from nn.ReLU to nn.ReLU6 (the
    same rule: pass on the positive part of the signal coming back; ReLU6's upper clip
    is left out, as ReLU's lower one is for the deconvnet)."""
    from captum.attr import Deconvolution, GuidedBackprop

    def register(self, module: nn.Module) -> None:
        if isinstance(module, nn.ReLU):
            type(self).__mro__[1]._register_hooks(self, module)   # captum's own way
        elif _relu_like(module):  # the same rule (captum's _backward_hook) on ReLU6
            self.backward_hooks.append(module.register_full_backward_hook(self._backward_hook))

    deconv = type("Deconvolution", (Deconvolution,), {"_register_hooks": register})
    guided = type("GuidedBackprop", (GuidedBackprop,), {"_register_hooks": register})
    return {"deconvnet": deconv, "guided": guided}


# ------------------------------------------------------------------------ layers

def _meta_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` on the meta device: shapes and geometry for free, whatever the
    model's size (a real forward at 224 px costs as much as a prediction)."""
    return copy.deepcopy(model).to("meta")


def _stats(model: nn.Module, input_shape: tuple[int, int, int]):
    return layer_stats(_meta_twin(model), tuple(input_shape))


def _is_spatial(r: LayerStats) -> bool:
    return len(r.out_shape) == 3 and r.rf is not None and not r.rf.is_global and bool(r.rf.size)


def spatial_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, LayerStats]:
    """Layers whose units look at a part of the input (a map output and a local receptive
    field), by name, in the order they run: the layers that have patches and maps."""
    return {r.name: r for r in _stats(model, input_shape).layers if _is_spatial(r)}


def check_spatial_layer(model: nn.Module, input_shape: tuple[int, int, int], layer: str,
                        what: str = "top patches") -> LayerStats:
    """The record of `layer`, refused with the reason and the valid names when it does
    not exist or its units do not look at a part of the image."""
    stats = _stats(model, input_shape)
    rows = {r.name: r for r in stats.layers} | stats.blocks
    valid = [r.name for r in stats.layers if _is_spatial(r)]
    if layer not in rows:
        raise ModelError(unknown("layer", layer, valid, "see: convlab inspect MODEL"))
    row = rows[layer]
    if not _is_spatial(row):
        reason = ("each of its units sees the whole image, so there is no patch to crop"
                  if row.rf is not None and row.rf.is_global else
                  "its output is not a map of positions")
        kind = f"{row.type}, " if row.type else ""
        raise ModelError(f"layer '{layer}' ({kind}output {'x'.join(map(str, row.out_shape)) or '-'}) "
                         f"has no {what}: {reason}; choose a layer with a spatial output, "
                         f"e.g. {', '.join(valid[-3:])} (see: convlab inspect MODEL)")
    return row


def cam_layer(model: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """Where Grad-CAM looks by default: the output of the last convolution whose output
    is still a map (more than 1x1), taken after what follows it at the same map size (its
    normalisation, activation, residual add, an Inception block's concatenation: the last
    module run once to finish with that size), as Grad-CAM's authors take the last
    rectified conv maps."""
    twin = _meta_twin(model)
    names = {m: n for n, m in twin.named_modules()}
    done: list[tuple[str, tuple[int, ...], bool]] = []   # (name, output shape, is conv), in order
    calls: dict[str, int] = {}

    def hook(m, args, out):
        if isinstance(out, torch.Tensor) and names[m]:
            calls[names[m]] = calls.get(names[m], 0) + 1
            done.append((names[m], tuple(out.shape[1:]), layer_kind(m) == "conv"))
    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            twin(torch.zeros((1, *input_shape), device="meta"))
    finally:
        for h in handles:
            h.remove()
    convs = [i for i, (_, shape, conv) in enumerate(done)
             if conv and len(shape) == 3 and shape[1] * shape[2] > 1]
    if not convs:
        raise ModelError(f"{type(model).__name__} has no convolution with a spatial output; "
                         f"Grad-CAM needs one (occlusion works on any model: --method occlusion)")
    last = convs[-1]
    size = done[last][1][1:]
    chosen = done[last][0]
    for name, out_shape, _ in done[last + 1:]:   # channels may grow (a concatenation)
        if len(out_shape) == 3 and out_shape[1:] == size and calls[name] == 1:
            chosen = name
    return chosen


# ------------------------------------------------------------------- class maps

@dataclass
class ClassMaps:
    """Evidence maps for a batch: one (h, w) map per image, >= 0, at the layer's
    resolution for Grad-CAM and at the input's for occlusion (upsample_maps brings
    either to the image)."""

    maps: torch.Tensor          # (N, h, w), float, >= 0
    targets: list[int]          # the class each map explains
    probs: torch.Tensor | None  # (N, K) class probabilities (None when the targets were given)
    method: str
    layer: str                  # Grad-CAM's layer ('' for occlusion)


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ModelError(unknown("layer", name, names, "see: convlab inspect MODEL")) from None


def _targets(model: nn.Module, x: torch.Tensor, targets: Sequence[int] | None
             ) -> tuple[list[int], torch.Tensor | None]:
    """(the class to explain per image, the probabilities): the predicted classes when
    `targets` is None (one forward pass), else `targets` as they are (no forward pass:
    a caller that predicted already passes what it found)."""
    if targets is None:
        with torch.no_grad():
            logits = model(x).float()                                # (N, K)
        return logits.argmax(1).tolist(), logits.softmax(1)
    out = [int(t) for t in targets]
    if len(out) != len(x) or min(out, default=0) < 0:
        raise ConfigError(f"targets must be one class index per image; got {out}")
    return out, None


def grad_cam(model: nn.Module, x: torch.Tensor, targets: Sequence[int] | None = None, *,
             layer: str | None = None, checked: bool = False) -> ClassMaps:
    """Grad-CAM (Selvaraju et al. 2017, captum's LayerGradCam) of `layer` (default:
    cam_layer, the last conv layer's output) for the preprocessed batch x (N, C, H, W): ReLU of the layer's maps
    weighted by the mean gradient of the target class's score over each map.

    A given `layer` is checked (check_spatial_layer: it exists and gives maps) unless
    `checked` is True: a caller that explains many inputs with one model and layer
    checks once and passes checked=True, since the check traces the whole model.

    `model` should be an attribution_copy (the function works on it as it is)."""
    from captum.attr import LayerGradCam

    if layer is None:
        layer = cam_layer(model, tuple(x.shape[1:]))
    elif not checked:
        check_spatial_layer(model, tuple(x.shape[1:]), layer, "Grad-CAM maps")
    chosen, probs = _targets(model, x, targets)
    with torch.enable_grad():
        try:
            cam = LayerGradCam(model, _module(model, layer)).attribute(
                x, target=chosen, relu_attributions=True)           # (N, 1, h, w)
        except RuntimeError as exc:
            if "does not require grad" not in str(exc):
                raise
            # e.g. a kNN head: its votes come from an index, with no gradient to follow
            raise ModelError(f"the class scores do not depend on layer '{layer}' through "
                             f"gradients (a nearest-neighbour head votes by index), so "
                             f"Grad-CAM has nothing to weigh; use --method occlusion") from None
    if cam.dim() != 4:
        raise ModelError(f"layer '{layer}' gives {tuple(cam.shape[1:])}, not maps; choose a "
                         f"convolution layer")
    return ClassMaps(cam.detach().float()[:, 0], chosen, probs, "gradcam", layer)


def occlusion(model: nn.Module, x: torch.Tensor, targets: Sequence[int] | None = None, *,
              window: int | None = None, stride: int | None = None, batch: int = 32) -> ClassMaps:
    """Occlusion sensitivity (Zeiler & Fergus 2013, captum's Occlusion): slide a square of
    the normalised input's zero (the mean colour) over the image and record how much the
    target class's score drops; the map is that drop (positive part), per pixel.

    window defaults to a seventh of the image side (32 px at 224), stride to half of it."""
    from captum.attr import Occlusion

    c, h, w = x.shape[1:]
    window = window or max(2, round(min(h, w) / 7))
    stride = stride or max(1, window // 2)
    if not (1 <= stride <= window <= min(h, w)):
        raise ConfigError(f"occlusion needs 1 <= stride <= window <= {min(h, w)}; "
                          f"got window {window}, stride {stride}")
    chosen, probs = _targets(model, x, targets)
    with torch.no_grad():
        attr = Occlusion(model).attribute(x, target=chosen, sliding_window_shapes=(c, window, window),
                                          strides=(c, stride, stride), baselines=0.0,
                                          perturbations_per_eval=batch)   # (N, C, H, W)
    return ClassMaps(attr.float().mean(1).clamp_min(0), chosen, probs, "occlusion", "")


def class_maps(model: nn.Module, x: torch.Tensor, targets: Sequence[int] | None = None, *,
               method: str = "gradcam", layer: str | None = None, window: int | None = None,
               stride: int | None = None) -> ClassMaps:
    """Evidence maps for x by `method` ('gradcam' or 'occlusion')."""
    if method == "gradcam":
        return grad_cam(model, x, targets, layer=layer)
    if method == "occlusion":
        if layer is not None:
            raise ConfigError("occlusion hides parts of the image itself and has no layer; "
                              "a layer is for --method gradcam")
        return occlusion(model, x, targets, window=window, stride=stride)
    raise ConfigError(unknown("method", method, METHODS))


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) maps -> (N, H, W) by bilinear interpolation, each scaled to 0..1 (a map
    with no evidence stays 0)."""
    up = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear",
                       align_corners=False)[:, 0]                   # (N, h, w) -> (N, H, W)
    top = up.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (up / top).clamp(0, 1)


# ---------------------------------------------------------------- top patches

class _LayerOutput(nn.Module):
    """The model cut after `layer`: input -> that layer's output, flattened (N, C*h*w),
    so one output index names one unit at one position (captum's target)."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model, self.layer = model, _module(model, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept: list[torch.Tensor] = []

        def hook(module, args, out):
            kept.append(out)
            raise LayerReached
        handle = self.layer.register_forward_hook(hook)
        try:
            self.model(x)
        except LayerReached:
            pass
        finally:
            handle.remove()
        if not kept:
            raise ModelError("the chosen layer did not run for this input")
        self.last_shape = tuple(kept[0].shape)
        return kept[0].flatten(1)

    def map_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """The layer's output shape (N, C, h, w) for x."""
        self(x)
        return self.last_shape


def crop_box(image: torch.Tensor, box: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """The part of image (C, H, W) inside box ((top, bottom), (left, right)), clipped
    to the image: the input pixels a unit with that receptive field computes from."""
    (t, b), (l, r) = box
    h, w = image.shape[-2:]
    return image[..., max(t, 0):min(b, h), max(l, 0):min(r, w)]


def unit_projections(model: nn.Module, x: torch.Tensor, layer: str,
                     units: Sequence[tuple[int, int, int]], method: str = "deconvnet") -> torch.Tensor:
    """The projection of unit (channel, y, x) of `layer` back to the input for each image
    of x (N, C, H, W): Zeiler & Fergus's deconvnet ('deconvnet', captum's
    Deconvolution) or guided backprop ('guided'). Returns (N, C, H, W)."""
    if method not in PROJECTIONS:
        raise ConfigError(unknown("projection", method, PROJECTIONS))
    cut = _LayerOutput(model, layer)
    with torch.no_grad():
        _, _, h, w = cut.map_shape(x[:1])
    targets = [c * h * w + y * w + xx for c, y, xx in units]
    explainer = _captum_relu_methods()[method](cut)
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        attr = explainer.attribute(x.clone().requires_grad_(), target=targets)
    return attr.detach().float()


@dataclass
class TopPatches:
    """For each unit (channel) of a layer, the images that excite it most, where, and the
    input region its receptive field covers there (with the projection over it)."""

    layer: str
    rf: ReceptiveField
    map_size: tuple[int, int]           # (h, w) of the layer's output
    units: list[int]                    # channels, in the order drawn
    hits: list[list[tuple[int, int, int, float]]]   # per unit: (image, y, x, activation)
    crops: list[list[torch.Tensor]]     # per unit, per hit: uint8 (C, h', w') input region
    projections: list[list[torch.Tensor]]  # the same regions of the projection, float


def top_patches(model: nn.Module, images: torch.Tensor, normalize, layer: str, *,
                units: int | Sequence[int] = 8, k: int = 9, projection: str | None = "deconvnet",
                batch: int = 32) -> TopPatches:
    """Zeiler & Fergus's top-k patches: for each of `units` channels of `layer` (a
    number: the first ones; or a list of channels), the k images of `images` (uint8
    (N, C, H, W), already at the model's input size) whose strongest response on that
    channel is the highest, at the position of that response, cropped to the unit's
    receptive field there; with each its projection back to the input (`projection`:
    'deconvnet', 'guided', or None for none).

    `normalize` maps float images in 0..1 to the model's input (Preprocess.normalize).
    One image gives at most one patch per unit, as in the paper's figures.
    """
    c_in, h_in, w_in = images.shape[1:]
    row = check_spatial_layer(model, (c_in, h_in, w_in), layer)
    channels, mh, mw = row.out_shape
    chosen = list(range(min(units, channels))) if isinstance(units, int) else [int(u) for u in units]
    if not chosen or not all(0 <= u < channels for u in chosen):
        raise ConfigError(f"layer '{layer}' has channels 0..{channels - 1}; got units {chosen}")
    if k < 1:
        raise ConfigError(f"k must be at least 1; got {k}")
    cut = _LayerOutput(model, layer)
    best_val, best_pos = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = normalize(images[i:i + batch].float() / 255)
            act = cut(x).view(len(x), channels, mh * mw)[:, chosen]     # (B, U, h*w)
            val, pos = act.max(2)                                        # (B, U)
            best_val.append(val)
            best_pos.append(pos)
    vals, poss = torch.cat(best_val), torch.cat(best_pos)                # (N, U)
    top_v, top_i = vals.topk(min(k, len(images)), dim=0)                 # (k, U)
    hits, crops, projections = [], [], []
    for u, channel in enumerate(chosen):
        unit_hits = []
        for v, idx in zip(top_v[:, u].tolist(), top_i[:, u].tolist()):
            p = int(poss[idx, u])
            unit_hits.append((idx, p // mw, p % mw, float(v)))
        boxes = [row.rf.box((y, x)) for _, y, x, _ in unit_hits]
        crops.append([crop_box(images[idx], b) for (idx, *_), b in zip(unit_hits, boxes)])
        if projection:
            x = normalize(images[[h[0] for h in unit_hits]].float() / 255)
            proj = unit_projections(model, x, layer, [(channel, y, xx) for _, y, xx, _ in unit_hits],
                                    projection)
            projections.append([crop_box(p, b) for p, b in zip(proj, boxes)])
        else:
            projections.append([])
        hits.append(unit_hits)
    return TopPatches(layer, row.rf, (mh, mw), chosen, hits, crops, projections)
