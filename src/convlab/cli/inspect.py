"""Looking inside a network: `inspect` (units, connections, weights, MACs and receptive
fields per layer), `conv-cost` (what one convolution costs), `show` (kernels, templates,
feature maps, top patches) and `explain` (where the evidence for a class lies)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError, ModelError, closest, unknown
from ..tables import FORMATS, render_table

__all__ = ["register", "CONVENTIONS", "layer_table", "share_table"]

CONVENTIONS = (
    "units = output activations of conv, linear and pooling layers (W*H*N for a conv layer); "
    "connections = W*H*K*K*M*N/groups for a conv layer, M*N for a linear layer, the window of "
    "each pooling output; weights = K*K*M*N/groups for a conv layer, biases counted apart "
    "(not as connections); MACs = multiply-adds with weights (= connections of conv and linear "
    "layers); FLOPs = 2 x MACs, as torch.utils.flop_counter counts them; depth = the longest "
    "chain of conv/linear layers from input to output; RF = the receptive field, the input "
    "pixels one unit of the output sees (HxW when they differ; 'global' for layers that mix "
    "the whole input: linear layers, pooling to 1x1), jump = input pixels between neighbouring "
    "units, start = input coordinate of the centre of the first unit's field (pixel i is "
    "centred on i)")

_LAYER_HEADERS = ["layer", "type", "output", "units", "connections", "weights", "biases", "MACs",
                  "RF", "jump", "start"]


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(map(str, s)) if s else "-"


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def _axes(values: tuple) -> int | float | str:
    """One number when every axis agrees (a whole float as an int), else 'HxW'."""
    vals = [int(v) if float(v).is_integer() else v for v in values]
    return vals[0] if len(set(vals)) == 1 else "x".join(map(str, vals))


def _rf_cells(rf) -> list:
    """RF, jump and start cells of a layer's receptive field."""
    if rf is None or (not rf.is_global and not rf.size):
        return [None, None, None]
    if rf.is_global:
        return ["global", None, None]
    return [_axes(rf.size), _axes(rf.jump), _axes(rf.start)]


def layer_table(stats, depth: int | None = None) -> tuple[list[str], list[list]]:
    """Headers and rows of the per-layer table, ending in a total row."""
    rows = [[r.name, r.type + (f" x{r.calls}" if r.calls > 1 else ""), _shape(r.out_shape),
             r.units, r.connections, r.weights, r.biases, r.macs, *_rf_cells(r.rf)]
            for r in stats.grouped(depth)]
    t = stats.totals()
    rows.append(["total", "", _shape(stats.output_shape), t["units"], t["connections"],
                 t["weights"], t["biases"], t["macs"], None, None, None])
    return _LAYER_HEADERS, rows


def share_table(stats) -> tuple[list[str], list[list]]:
    """Headers and rows: the share of units, connections, parameters and MACs by layer kind."""
    rows = [[kind, int(s["layers"])] + [f"{100 * s[c]:.1f}%" for c in ("units", "connections",
                                                                         "params", "macs")]
            for kind, s in stats.shares().items()]
    return ["kind", "layers", "units", "connections", "parameters", "MACs"], rows


def _print_inspect(name: str, stats, classes: int, depth: int | None, fmt: str) -> None:
    headers, rows = layer_table(stats, depth)
    t = stats.totals()
    if fmt == "json":
        print(json.dumps({
            "model": name, "input": list(stats.input_shape), "classes": classes,
            "output": list(stats.output_shape), "conventions": CONVENTIONS,
            "layers": [dict(zip(headers, r)) for r in rows[:-1]], "totals": t,
            "shares": stats.shares()}, indent=2))
        return
    if fmt == "csv":
        print(render_table(headers, rows, "csv"))
        return
    print(f"{name}: input {_shape(stats.input_shape)}, {classes} classes, output "
          f"{_shape(stats.output_shape)}\n")
    print(render_table(headers, rows, fmt, right=[False] * 3 + [True] * (len(headers) - 3)))
    print(f"\nparameters {t['params']:,} (weights {t['weights']:,} + biases {t['biases']:,}); "
          f"units {t['units']:,}; connections {t['connections']:,}; MACs {t['macs']:,} "
          f"({_si(t['macs'])}); FLOPs {_si(t['flops'])}; depth {t['depth']}")
    print("\nwhere are the units, connections and weights? (share by layer type)\n")
    print(render_table(*share_table(stats), fmt, right=[False] + [True] * 5))
    print(f"\nconventions: {CONVENTIONS}.")


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..analysis import compare_models, default_classes, model_stats, parse_input
    from ..models import list_models

    if args.depth is not None and args.depth < 1:
        raise ConfigError(f"--depth must be at least 1; got {args.depth}")
    if args.compare:
        names = [n.strip() for n in args.compare.split(",") if n.strip()]
        for n in names:
            if n not in list_models():
                raise ModelError(unknown("model", n, list_models(), "see: convlab models"))
        rows = [[s.name, s.input, s.params, s.macs, s.units, s.connections, s.depth,
                 None if s.top1 is None else round(s.top1, 1)]
                for s in compare_models(names, args.classes)]
        print(render_table(["model", "input", "parameters", "MACs", "units", "connections", "depth",
                            "ImageNet top-1 %"], rows, args.format))
        if args.format in ("table", "markdown"):
            print("\nat each model's default input; top-1 of torchvision's IMAGENET1K_V1 weights "
                  "(blank: not in the weights metadata); FLOPs = 2 x MACs")
        return 0
    if not args.model:
        raise ConfigError("name a model (convlab inspect alexnet) or give --compare a,b,c; "
                          "see: convlab models")
    shape = parse_input(args.input) if args.input else None
    name, extra = args.model, {}
    if Path(args.model).is_dir():  # a run directory: its model as it was trained
        from ..checkpoint import read_meta

        meta = read_meta(args.model)
        extra = dict(meta.get("model", {}).get("kwargs", {}))
        name = meta.get("model", {}).get("name", "")
        pre = meta.get("preprocess", {})
        c = extra.pop("in_chans", pre.get("channels", 0))
        side = extra.pop("input_size", None) or (pre.get("size") or [None])[0]
        shape = shape or ((c, side, side) if side else None)
        classes_default = extra.pop("num_classes", None) or len(meta.get("classes", [])) or None
    else:
        classes_default = default_classes(name)
    classes = classes_default if args.classes is None else args.classes
    stats = model_stats(name, shape, classes, **extra)
    _print_inspect(name if name == args.model else f"{name} ({args.model})", stats, classes,
                   args.depth, args.format)
    return 0


def cmd_conv_cost(args: argparse.Namespace) -> int:
    from ..analysis.conv_cost import (LECTURE_EXAMPLES, bottleneck_costs, conv_cost,
                                      separable_costs)

    headers = ["layer", "weights", "weights per output channel", "MACs", "MACs (short)"]

    def rows(costs):
        out = [[c.label, c.weights, c.weights_per_output_channel, c.macs, _si(c.macs)] for c in costs]
        if len(costs) > 1:
            total = sum(c.macs for c in costs)
            out.append(["total", sum(c.weights for c in costs), None, total, _si(total)])
        return out

    if args.in_channels is None and args.out_channels is None:
        ex = LECTURE_EXAMPLES["inception"]
        std = conv_cost(ex["in_channels"], ex["out_channels"], ex["kernel"], ex["size"])
        cheap = bottleneck_costs(**ex)
        print(f"1) a {std.kernel}x{std.kernel} convolution from {std.in_channels} to "
              f"{std.out_channels} channels on a {std.height}x{std.width} map (Inception's 5x5 "
              f"branch)\n")
        print(render_table(headers, rows([std]), args.format))
        print(f"\n   with a 1x1 bottleneck to {ex['bottleneck']} channels first:\n")
        print(render_table(headers, rows(cheap), args.format))
        total = sum(c.macs for c in cheap)
        print(f"\n   {_si(cheap[0].macs)} + {_si(cheap[1].macs)} = {_si(total)} multiply-adds "
              f"instead of {_si(std.macs)}: {std.macs / total:.1f}x fewer")
        ex = LECTURE_EXAMPLES["separable"]
        std = conv_cost(ex["in_channels"], ex["out_channels"], ex["kernel"], ex["size"])
        dw, pw = separable_costs(**ex)
        k, m = std.kernel, std.in_channels
        print(f"\n2) a {k}x{k} convolution over {m} channels: {k}*{k}*{m} = "
              f"{std.weights_per_output_channel} weights per output channel;\n   depthwise-"
              f"separable: {k}*{k} = {dw.weights_per_output_channel} (depthwise, per channel) + "
              f"{pw.weights_per_output_channel} (pointwise 1x1) = "
              f"{dw.weights_per_output_channel + pw.weights_per_output_channel}")
        print("\nyour own: convlab conv-cost --in 480 --out 48 --kernel 5 --size 14 "
              "--bottleneck 16 --separable")
        return 0
    if args.in_channels is None or args.out_channels is None:
        raise ConfigError("give both --in and --out (and --kernel, --size), or neither for the "
                          "lecture's worked examples")
    std = conv_cost(args.in_channels, args.out_channels, args.kernel, args.size)
    print(render_table(headers, rows([std]), args.format))
    if args.bottleneck:
        print(f"\nwith a 1x1 bottleneck to {args.bottleneck} channels first:\n")
        costs = bottleneck_costs(args.in_channels, args.out_channels, args.kernel, args.size,
                                 args.bottleneck)
        print(render_table(headers, rows(costs), args.format))
    if args.separable:
        print("\ndepthwise-separable (depthwise KxK, then pointwise 1x1):\n")
        costs = separable_costs(args.in_channels, args.out_channels, args.kernel, args.size)
        print(render_table(headers, rows(costs), args.format))
    return 0


# ---------------------------------------------------------------------------- show

def _load_target(target: str, pretrained: bool, classes: int | None):
    """(model in eval mode, label, preprocessing, classes, dataset name) for a run
    directory or a registered model name."""
    from ..models import MODELS, create_model, default_preprocess, model_spec

    if Path(target).is_dir():
        from ..checkpoint import load_run

        run = load_run(target)
        name = run.meta.get("model", {}).get("name", "?")
        label = name if Path(target).name == name else f"{name} ({Path(target).name})"
        return (run.model, label, run.preprocess, run.classes,
                run.meta.get("dataset", {}).get("name"))
    if target not in MODELS:
        raise ModelError(unknown("model", target, MODELS,
                                 "or give a run directory; see: convlab models"))
    spec = model_spec(target)
    names = None
    if pretrained:  # create_model refuses a model without bundled weights and names the ones with
        model = create_model(target, spec.num_classes, pretrained=True)
        if spec.num_classes == 1000:
            from ..models.pretrained import imagenet_classes

            names = imagenet_classes()
        label = f"{target} (pretrained)"
    else:
        model = create_model(target, classes or spec.num_classes)
        label = f"{target} (random init, untrained)"
    pre, _ = default_preprocess(target)
    return model.eval(), label, pre, names, None


def _show_image(args, pre, dataset: str | None):
    """(preprocessed image (1, C, H, W), description) for feature maps."""
    import torch

    from ..data import decode_image

    if args.image:
        img = decode_image(args.image, pre.channels)[None]
        what = Path(args.image).name
    elif dataset:
        from ..data import load_dataset

        try:
            test = load_dataset(dataset, "test")
        except Exception as exc:  # noqa: BLE001 - any failure: ask for an image instead
            raise ConfigError(f"cannot load the run's dataset '{dataset}' ({exc}); "
                              f"give --image FILE") from None
        img = test.images[:1]
        what = f"{dataset} test image 0 ({test.classes[int(test.labels[0])]})"
    else:
        from skimage import data as skdata

        img = torch.from_numpy(skdata.chelsea().copy()).permute(2, 0, 1)[None]
        what = "scikit-image's chelsea (a cat)"
    return pre(img), what


# scikit-image's photos that ship with it (the others need a download)
SAMPLE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "immunohistochemistry",
                 "hubble_deep_field", "retina", "colorwheel", "camera", "coins", "moon", "page",
                 "text", "clock", "brick", "grass", "gravel")


def _photo_files(folder: Path, limit: int) -> list[Path]:
    """Image files in `folder` and its subfolders (class folders or not), sorted."""
    from ..data.images import IMAGE_SUFFIXES

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise ConfigError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files[:limit]


def _patch_images(data: str | None, pre, dataset: str | None, limit: int):
    """(uint8 images at the model's input (N, C, H, W), description) to search for top
    patches: a folder of photos (class folders or not), a dataset name, the run's own
    dataset, or else scikit-image's sample photos."""
    import torch

    from ..data import decode_image, load_dataset

    if limit < 1:
        raise ConfigError(f"--limit must be at least 1; got {limit}")
    if data and Path(data).is_dir():
        files = _photo_files(Path(data), limit)
        return (torch.cat([pre.fit(decode_image(f, pre.channels)[None]) for f in files]),
                f"{len(files)} images of {data}")
    name = data or dataset
    if name:
        from ..data import dataset_spec

        spec = dataset_spec(name)   # a clear error naming the datasets for an unknown name
        split = "test" if "test" in spec.sizes else "train"
        images = load_dataset(name, split, channels=pre.channels).images[:limit]
        return pre.fit(images), f"{len(images)} {name} {split} images"
    from skimage import data as skdata

    photos = []
    for n in SAMPLE_PHOTOS:
        a = torch.from_numpy(getattr(skdata, n)().copy())
        a = a.permute(2, 0, 1)[:3] if a.dim() == 3 else a[None]     # (H, W, 3) or (H, W)
        photos.append(pre.fit(a[None]))
    images = torch.cat(photos)[:limit]
    return images, f"{len(images)} of scikit-image's sample photos"


def _show_top_patches(args, model, label, pre, dataset, out_dir: Path) -> Path:
    from ..analysis.attribution import attribution_copy, spatial_layers, top_patches
    from ..figures.explain import save_top_patches

    shape = (pre.channels, *pre.size)
    if not args.layer:
        names = list(spatial_layers(model, shape))
        raise ConfigError(f"name the layer with --layer; layers with a spatial output: "
                          f"{', '.join(names)}")
    if args.units < 1 or args.k < 1:
        raise ConfigError(f"--units and --k must be at least 1; got {args.units} and {args.k}")
    layer = args.layer[0]
    twin = attribution_copy(model)
    from ..analysis.attribution import check_spatial_layer

    check_spatial_layer(twin, shape, layer)   # before loading any data
    images, what = _patch_images(args.data, pre, dataset, args.limit)
    projection = None if args.projection == "none" else args.projection
    patches = top_patches(twin, images, pre.normalize, layer, units=args.units, k=args.k,
                          projection=projection)
    size = "x".join(map(str, sorted(set(patches.rf.size))))
    title = (f"{label}: {layer}, the {args.k} patches of {what} that excite each unit most "
             f"(receptive field {size} px)" + (f", each with its {projection} projection"
                                               if projection else ""))
    return save_top_patches(patches, out_dir / f"top-patches-{_slug(layer)}.png", title=title,
                            projections=projection is not None)


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def cmd_show(args: argparse.Namespace) -> int:
    import torch

    from ..figures.learned import save_feature_maps, save_kernels, save_templates
    from ..analysis.learned import conv_layers

    model, label, pre, classes, dataset = _load_target(args.target, args.pretrained, args.classes)
    if args.out:
        out_dir = Path(args.out)
    elif Path(args.target).is_dir():
        out_dir = Path(args.target)
    else:
        out_dir = Path(f"show-{args.target}")
    if args.what == "top-patches":
        print(_show_top_patches(args, model, label, pre, dataset, out_dir))
    elif args.what == "kernels":
        layer = args.layer[0] if args.layer else None
        print(save_kernels(model, out_dir / "kernels.png", label=label, layer=layer))
    elif args.what == "templates":
        layer = args.layer[0] if args.layer else None
        shape = (pre.channels, *pre.size)
        print(save_templates(model, shape, out_dir / "templates.png", classes=classes, label=label,
                             layer=layer))
    else:
        layers = args.layer or list(conv_layers(model))[:1]
        if not layers:
            raise ModelError(f"{label} has no convolution layers; name layers with --layer "
                             f"(see: convlab inspect MODEL)")
        x, what = _show_image(args, pre, dataset)
        if args.max_maps < 1:
            raise ConfigError(f"--max-maps must be at least 1; got {args.max_maps}")
        with torch.no_grad():
            paths = save_feature_maps(model, x, layers, out_dir, label=label, image_name=what,
                                      max_maps=args.max_maps)
        for p in paths:
            print(p)
    return 0


def _class_index(name: str, classes: list[str] | None, k: int) -> int:
    """The index of class `name` (or of a number) among the model's classes."""
    if classes and name in classes:
        return classes.index(name)
    if name.isdigit() and int(name) < k:
        return int(name)
    if not classes:
        raise ConfigError(f"the model names no classes; give --class as a number 0..{k - 1}")
    shown = ", ".join(classes[:12]) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")
    raise ConfigError(f"unknown class '{name}'{closest(name, classes)}; the model's classes: {shown}")


def cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from ..analysis.attribution import attribution_copy, class_maps, upsample_maps
    from ..data import decode_image
    from ..figures.explain import save_explanation

    for f in args.images:
        if not Path(f).is_file():
            raise ConfigError(f"{f}: no such image file")
    if Path(args.target).is_dir():
        model, label, pre, classes, _ = _load_target(args.target, False, None)
        out_dir = Path(args.out) if args.out else Path(args.target) / "explain"
    else:  # a model name: its pretrained weights (a random network has nothing to explain)
        model, label, pre, classes, _ = _load_target(args.target, True, None)
        out_dir = Path(args.out or f"explain-{args.target}")
    twin = attribution_copy(model)
    for f in args.images:
        x_img = pre.fit(decode_image(f, pre.channels)[None])         # (1, C, H, W) uint8
        x = pre.normalize(x_img.float() / 255)
        with torch.no_grad():
            probs = twin(x).float().softmax(1)[0]                    # (K,)
        top = int(probs.argmax())
        t = top if args.class_name is None else _class_index(args.class_name, classes, len(probs))
        maps = class_maps(twin, x, [t], method=args.method, layer=args.layer)
        heat = upsample_maps(maps.maps, tuple(x.shape[-2:]))[0]
        name = classes[t] if classes and t < len(classes) else str(t)
        top_name = classes[top] if classes and top < len(classes) else str(top)
        how = f"Grad-CAM on {maps.layer}" if maps.method == "gradcam" else "occlusion"
        path = save_explanation(x_img[0], heat, out_dir / f"explain-{_slug(Path(f).stem)}-{maps.method}.png",
                                title=f"{label}: {Path(f).name}, predicted {top_name} "
                                      f"({float(probs[top]):.0%})",
                                caption=f"evidence for {name} ({how})")
        print(f"{Path(f).name}: predicted {top_name} {float(probs[top]):.3f}; "
              f"map for {name} -> {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="units, connections, weights, biases, MACs and receptive field of every "
        "layer of a model",
        description="Per-layer table of a registered model (output shape, units, connections, "
        "weights, biases, MACs, receptive field size, jump and start), the totals and the share "
        "of each by layer type. "
        "FLOPs = 2 x MACs. Counted on the meta device: shapes only, no memory.")
    p.add_argument("model", nargs="?", help="a registered model (see: convlab models) or a run "
                   "directory")
    p.add_argument("--input", help="input CxHxW, e.g. 3x224x224 (default: the model's own; "
                   "a single side, e.g. 128, keeps its channels)")
    p.add_argument("--classes", type=int, help="number of classes (default: 1000 for ImageNet "
                   "zoo models, the model's own for the others)")
    p.add_argument("--depth", type=int, help="merge layers into blocks this many names deep "
                   "(default: every layer)")
    p.add_argument("--compare", help="comma-separated models: one row of totals per model")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser(
        "conv-cost", help="weights and multiply-adds of a convolution (and cheaper variants)",
        description="Without options: the lecture's worked examples (Inception's 1x1 bottleneck, "
        "depthwise-separable convolution). With --in/--out: your own layer.")
    p.add_argument("--in", dest="in_channels", type=int, help="input channels M")
    p.add_argument("--out", dest="out_channels", type=int, help="output channels N")
    p.add_argument("--kernel", type=int, default=3, help="kernel size K (default 3)")
    p.add_argument("--size", type=int, default=14, help="output map side W = H (default 14)")
    p.add_argument("--bottleneck", type=int, help="also cost a 1x1 bottleneck to this many channels")
    p.add_argument("--separable", action="store_true", help="also cost a depthwise-separable version")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.set_defaults(run=cmd_conv_cost)

    p = sub.add_parser(
        "show", help="PNG pictures of what a network learned: kernels, templates, feature maps, "
        "top patches",
        description="kernels: the first conv layer's kernels (or --layer); templates: a linear "
        "layer's weights from the pixels to each unit (mnist_linear, mnist_mlp); features: "
        "the feature maps of --layer (default the first conv layer) for one image; "
        "top-patches: for --units channels of --layer, the --k patches of a dataset that excite "
        "each most, cropped to the unit's receptive field, each beside its deconvnet projection "
        "(Zeiler & Fergus 2013).")
    p.add_argument("target", help="a run directory, or a registered model name")
    p.add_argument("what", nargs="?", choices=("kernels", "templates", "features", "top-patches"),
                   default="kernels", help="what to draw (default kernels)")
    p.add_argument("--layer", action="append", help="layer name (see: convlab inspect MODEL); "
                   "repeat for several feature-map layers")
    p.add_argument("--image", help="image file for feature maps (default: the run's first test "
                   "image, or a cat photo for a model name)")
    p.add_argument("--pretrained", action="store_true",
                   help="a model name with bundled weights (see: convlab backbones)")
    p.add_argument("--classes", type=int, help="classes of an untrained model (default: its own)")
    p.add_argument("--max-maps", type=int, default=64, help="feature maps per layer (default 64)")
    p.add_argument("--data", help="top-patches: images to search, a folder of photos (class "
                   "folders or not) or a dataset name (default: the run's test images, or "
                   "scikit-image's sample photos for a model name)")
    p.add_argument("--units", type=int, default=8, help="top-patches: channels shown, the first "
                   "N of the layer (default 8)")
    p.add_argument("--k", type=int, default=9, help="top-patches: patches per unit (default 9)")
    p.add_argument("--projection", choices=("deconvnet", "guided", "none"), default="deconvnet",
                   help="top-patches: each patch's projection to the input: Zeiler & Fergus's "
                   "deconvnet, guided backprop, or none (default deconvnet)")
    p.add_argument("--limit", type=int, default=2000, help="top-patches: images searched at "
                   "most (default 2000)")
    p.add_argument("--out", help="folder for the PNGs (default: the run directory, or "
                   "show-MODEL for a model name)")
    p.set_defaults(run=cmd_show)

    p = sub.add_parser(
        "explain", help="where the evidence for a class lies in each image (Grad-CAM, occlusion)",
        description="Writes each image beside a heatmap of the evidence for the predicted (or "
        "--class) class: Grad-CAM on the last conv layer's output (captum's LayerGradCam), or "
        "occlusion sensitivity, the drop of the class score when a grey square hides each "
        "place (Zeiler & Fergus 2013). A model name uses its bundled pretrained weights.")
    p.add_argument("target", help="a run directory, or a model name with bundled weights "
                   "(see: convlab backbones)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--method", choices=("gradcam", "occlusion"), default="gradcam",
                   help="gradcam (fast) or occlusion (a forward pass per square; default gradcam)")
    p.add_argument("--class", dest="class_name", help="explain this class (a name, or its "
                   "number) instead of the predicted one")
    p.add_argument("--layer", help="gradcam: the layer whose maps are weighed (default: the "
                   "last conv layer's output)")
    p.add_argument("--out", help="folder for the PNGs (default RUN/explain, or explain-MODEL)")
    p.set_defaults(run=cmd_explain)
