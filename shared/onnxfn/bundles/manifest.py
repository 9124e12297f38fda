"""The bundle manifest: what a model takes, what it gives, and how to serve it.

`manifest.json` is parsed into frozen dataclasses and validated once, on load;
every error names the field at fault (for example `inputs[0].image.mean`).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from onnxfn.bundles import images
from onnxfn.bundles.images import ImageSpec
from onnxfn.bundles.reader import Reader

FORMAT = 1
TASKS = ("classification", "segmentation", "tensor", "detection")
DTYPES = ("float32", "float64", "float16", "uint8", "uint16", "uint32", "uint64",
          "int8", "int16", "int32", "int64", "bool", "string")
LAYOUTS = ("NCHW", "NHWC", "CHW", "HWC", "NHW", "HW", "NF", "NCDHW", "NDHWC")
FRAME_TASKS = {"each": ("classification", "segmentation"), "volume": ("classification", "segmentation", "tensor")}
ACTIVATIONS = ("none", "softmax", "sigmoid")
DECISIONS = ("argmax", "threshold")
DETECTION_FORMATS = ("boxes", "yolo")
YOLO_LAYOUTS = ("auto", "features_first", "anchors_first")
MAX_DETECTIONS = 10000
ARTIFACT_KINDS = ("portable", "optimized", "int8")
ARCHES = ("x86_64", "aarch64")
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx", "asimddp", "i8mm", "bf16", "sve")
OPT_LEVELS = ("DISABLE", "BASIC", "EXTENDED", "ALL")
SEGMENTATION_TYPES = ("binary", "fractional")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Dim = int | str  # a static size, or the name of a dynamic dimension


@dataclass(frozen=True)
class MemoryCost:
    """What one inference costs in memory, measured by `onnxfn package` (or at the first load): the peak growth
    of the process while the model runs is `fixed + per_element` x the input tensor's elements. `measured`
    keeps the runs it was fitted from (input shape and peak bytes each)."""
    fixed: int
    per_element: float
    measured: tuple[dict, ...] = ()

    def bytes(self, elements: int) -> int:
        """The peak memory, in bytes, of one inference on an input of `elements` elements."""
        return int(self.fixed + self.per_element * elements)


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, dtype, shape (sizes, or names of dynamic dimensions), and for an image input
    its layout and `image` section."""
    name: str
    dtype: str
    shape: tuple[Dim, ...]
    layout: str | None = None
    image: ImageSpec | None = None

    def axis(self, letter: str) -> int | None:
        """The position of axis `letter` (N, C, D, H, W or F) in the layout; None without a layout or that axis."""
        return self.layout.index(letter) if self.layout and letter in self.layout else None


@dataclass(frozen=True)
class Concept:
    """A coded concept as DICOM codes it: the coding scheme (`SCT` for SNOMED CT, `DCM`, or a private `99...`
    one), the code value in it and its meaning (the human-readable text)."""
    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class LabelCode(Concept):
    """What one label is, coded, for DICOM results: the segmented property type of its SEG segment, or the
    finding an SR reports; `category` is the segmented property category (a default when None)."""
    category: Concept | None = None


@dataclass(frozen=True)
class OutputSpec:
    """One model output and how it becomes an answer: activation, segmentation decision and threshold, labels;
    for DICOM results, one code per label (`codes`, None entries take a default) and the SEG type
    (`segmentation_type`: binary, or fractional; None means binary)."""
    name: str
    activation: str = "none"
    decision: str | None = None
    threshold: float = 0.5
    labels: tuple[str, ...] | None = None
    codes: tuple[LabelCode | None, ...] | None = None
    segmentation_type: str | None = None


@dataclass(frozen=True)
class DetectionSpec:
    """How a detection model's outputs become boxes: the output convention, and the score threshold,
    class-wise NMS IoU threshold and detection cap applied in post-processing.

    `boxes`: post-NMS outputs as torchvision exports them, named by `boxes` ([N, 4] x1, y1, x2, y2 in
    model-input pixels), `scores` ([N]) and `labels` ([N] class indices). `yolo`: one raw output (the first)
    of shape [1, 4+C, A] (`features_first`) or [1, A, 4+C] (`anchors_first`): cx, cy, w, h in model-input
    pixels and C class scores per anchor; `auto` tells the two apart from the shape and the label count."""
    format: str
    layout: str = "auto"
    boxes: str | None = None
    scores: str | None = None
    labels: str | None = None
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100


@dataclass(frozen=True)
class Requirement:
    """What a CPU must have: an architecture and instruction-set features (as /proc/cpuinfo names them)."""
    arch: str
    features: tuple[str, ...] = ()

    def satisfied_by(self, arch: str, features: tuple[str, ...] | None) -> bool:
        """Whether a CPU of `arch` with `features` (None: unknown, taken as none) meets this requirement."""
        return arch == self.arch and set(self.features) <= set(features or ())


@dataclass(frozen=True)
class Artifact:
    """One model file of the bundle, pinned by size and sha256, and the CPU class it was made for."""
    path: str
    sha256: str
    size: int
    kind: str = "portable"                 # portable, optimized (offline-optimized graph), int8 (QDQ)
    requires: Requirement | None = None    # None: runs anywhere (the portable artifact)
    preoptimized: bool = False             # load without re-optimizing (ORT_DISABLE_ALL)
    verified: bool = True                  # checked against the portable model on a CPU of its class
    accuracy: dict | None = None           # the packaging gate's figures


@dataclass(frozen=True)
class Example:
    """The bundle's example inputs (`example.npz`: one array per input name), pinned by size and sha256 like
    an artifact: warm-ups and the bad-input-versus-broken-artifact probe run on them instead of zeros."""
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Tuning:
    """Session settings a benchmark chose for a CPU class (`onnxfn bench --write`)."""
    requires: Requirement
    artifact: str | None = None
    graph_optimization_level: str | None = None
    intra_op_threads: int | None = None    # None: from the CPU quota
    allow_spinning: bool = False
    disable_prepacking: bool = False
    measured: dict | None = None


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json, parsed and validated; top-level keys onnxfn does not know are kept in `extra`."""
    name: str
    version: str
    task: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    artifacts: tuple[Artifact, ...]
    description: str = ""
    format: int = FORMAT
    tuning: tuple[Tuning, ...] = ()
    detection: DetectionSpec | None = None
    example: Example | None = None
    memory: MemoryCost | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def portable(self) -> Artifact:
        """The one portable artifact (every valid manifest has exactly one): the fallback that runs anywhere."""
        return next(a for a in self.artifacts if a.kind == "portable")

    @property
    def image_input(self) -> InputSpec | None:
        """The input with an `image` section (image tasks have exactly one), or None for a tensor model."""
        return next((i for i in self.inputs if i.image is not None), None)

    @property
    def sized_input(self) -> InputSpec:
        """The input a memory cost is per element of: the image input, else the first."""
        return self.image_input or self.inputs[0]

    @property
    def primary_output(self) -> OutputSpec:
        """The output the task's post-processing reads (the first one)."""
        return self.outputs[0]

    def to_dict(self) -> dict:
        """The manifest as manifest.json holds it: `extra` back at the top level, None fields and empty
        `tuning` left out, tuples as lists."""
        data = asdict(self)
        data.update(data.pop("extra"))
        if not data["tuning"]:
            del data["tuning"]
        return _strip(data)


def _strip(value):
    """Drop None fields so manifests stay short, and turn tuples into lists."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    return value


def parse(data: Any) -> Manifest:
    """Validate a manifest's JSON value and build the typed manifest."""
    r = Reader(data, "")
    fmt = r.get("format", int, FORMAT)
    if fmt != FORMAT:
        raise r.fail("format", f"is {fmt}, but this onnxfn reads format {FORMAT}: upgrade onnxfn or repackage the bundle")
    name = r.get("name", str)
    if not _NAME.fullmatch(name):
        raise r.fail("name", "must be 1-128 letters, digits, '.', '_' or '-' (it appears in URLs), "
                             f"starting with a letter or digit; got {name!r}")
    version = str(r.get("version", (str, int)))
    task = r.get("task", str, choices=TASKS)
    inputs = tuple(_input(i) for i in r.items("inputs"))
    outputs = tuple(_output(o) for o in r.items("outputs"))
    artifacts = tuple(_artifact(a) for a in r.items("artifacts"))
    tuning = tuple(_tuning(t) for t in r.items("tuning")) if data.get("tuning") else ()
    detection = _detection(Reader(data["detection"], "detection")) if data.get("detection") is not None else None
    example = _example(Reader(data["example"], "example")) if data.get("example") is not None else None
    memory = _memory(Reader(data["memory"], "memory")) if data.get("memory") is not None else None
    known = {"format", "name", "version", "task", "inputs", "outputs", "artifacts", "description", "tuning",
             "detection", "example", "memory"}
    manifest = Manifest(name=name, version=version, task=task, inputs=inputs, outputs=outputs,
                        artifacts=artifacts, description=r.get("description", str, ""), tuning=tuning,
                        detection=detection, example=example, memory=memory,
                        extra={k: v for k, v in data.items() if k not in known})
    _check(manifest, r)
    return manifest


def _input(r: Reader) -> InputSpec:
    shape = r.get("shape", list)
    dims: list[Dim] = []
    for i, d in enumerate(shape):
        if isinstance(d, bool) or not (isinstance(d, str) and d or isinstance(d, int) and (d > 0 or d == -1)):
            raise r.fail(f"shape[{i}]", f"must be a positive size, -1 or a dimension name; got {d!r}")
        dims.append(f"d{i}" if d == -1 else d)
    layout = r.get("layout", str, None, choices=LAYOUTS)
    if layout is not None and len(layout) != len(dims):
        raise r.fail("layout", f"{layout} has {len(layout)} axes but shape has {len(dims)}")
    image = images.parse(Reader(r.data["image"], r.path("image"))) if r.data.get("image") is not None else None
    spec = InputSpec(name=r.get("name", str), dtype=r.get("dtype", str, choices=DTYPES),
                     shape=tuple(dims), layout=layout, image=image)
    if image is not None:
        _check_image_input(spec, r)
    return spec


def _memory(r: Reader) -> MemoryCost:
    fixed = r.get("fixed", int)
    per_element = r.get("per_element", float)
    if fixed < 0 or per_element < 0:
        raise r.fail("fixed" if fixed < 0 else "per_element", "must be 0 or more")
    measured = r.get("measured", list, [])
    if not all(isinstance(m, dict) for m in measured):
        raise r.fail("measured", "must be a list of objects (input shape and peak bytes of each run)")
    return MemoryCost(fixed=fixed, per_element=per_element, measured=tuple(measured))


def _check_image_input(spec: InputSpec, r: Reader) -> None:
    image = spec.image
    if spec.layout is None:
        raise r.fail("layout", f"is required for an image input (one of {', '.join(LAYOUTS)})")
    if spec.dtype not in ("float32", "float64", "float16", "uint8"):
        raise r.fail("dtype", f"{spec.dtype} cannot hold a pre-processed image; use float32, float16, float64 or uint8")
    c_axis = spec.axis("C")
    if c_axis is not None and isinstance(spec.shape[c_axis], int) and spec.shape[c_axis] != image.channels:
        raise r.fail("image.color", f"is {image.color} ({image.channels} channel(s)) but the input's channel "
                                    f"dimension is {spec.shape[c_axis]}")
    if c_axis is None and spec.layout != "NF" and image.color != "L":
        raise r.fail("image.color", f"must be L: layout {spec.layout} has no channel axis")
    _check_depth(spec, r)
    h_axis, w_axis = spec.axis("H"), spec.axis("W")
    if spec.layout == "NF":
        if image.size is None:
            raise r.fail("image.size", "is required with layout NF (a flat feature vector)")
        f = spec.shape[1]
        expected = image.size[0] * image.size[1] * image.channels
        if isinstance(f, int) and f != expected:
            raise r.fail("image.size", f"{image.size[0]}x{image.size[1]}x{image.channels} = {expected} features, "
                                       f"but the input takes {f}")
        return
    static = [spec.shape[a] for a in (h_axis, w_axis)]
    if image.size is not None:
        for axis, want, label in zip((h_axis, w_axis), image.size, ("height", "width")):
            if isinstance(spec.shape[axis], int) and spec.shape[axis] != want:
                raise r.fail("image.size", f"{label} {want} differs from the input's fixed {label} {spec.shape[axis]}")
    elif all(isinstance(d, int) for d in static):
        object.__setattr__(image, "size", (static[0], static[1]))
    elif any(isinstance(d, int) for d in static):
        raise r.fail("image.size", "is required when only one of height and width is fixed")


def _check_depth(spec: InputSpec, r: Reader) -> None:
    """A depth axis (D) and `frames: "volume"` go together: the frames are what fills that axis."""
    image = spec.image
    if spec.axis("D") is not None and image.frames != "volume":
        raise r.fail("image.frames", f"must be volume for layout {spec.layout}: its depth axis (D) is filled with a "
                                     f"multi-frame image's frames; got {image.frames!r}")
    if image.frames == "volume" and spec.axis("D") is None:
        raise r.fail("layout", f"is {spec.layout}, which has no depth axis: frames \"volume\" stacks the frames on "
                               "one (NCDHW or NDHWC)")
    if image.frames == "volume" and image.tiling is not None:
        raise r.fail("image.tiling", "applies to 2-D images; frames \"volume\" runs the whole volume at once")


def _output(r: Reader) -> OutputSpec:
    labels = r.get("labels", list, None)
    if labels is not None:
        if not labels or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in labels):
            raise r.fail("labels", "must be a non-empty list of strings")
        labels = tuple(str(v) for v in labels)
        if len(set(labels)) != len(labels):
            raise r.fail("labels", "must not repeat a label")
    spec = OutputSpec(name=r.get("name", str),
                      activation=r.get("activation", str, "none", choices=ACTIVATIONS),
                      decision=r.get("decision", str, None, choices=DECISIONS),
                      threshold=r.get("threshold", float, 0.5), labels=labels, codes=_codes(r, labels),
                      segmentation_type=r.get("segmentation_type", str, None, choices=SEGMENTATION_TYPES))
    if not 0.0 < spec.threshold < 1.0 and spec.activation != "none":
        raise r.fail("threshold", f"must lie between 0 and 1 after {spec.activation}, got {spec.threshold}")
    return spec


def _codes(r: Reader, labels: tuple[str, ...] | None) -> tuple[LabelCode | None, ...] | None:
    """One entry per label (null: the default code), each a coded concept with an optional category."""
    codes = r.get("codes", list, None)
    if codes is None:
        return None
    if labels is None or len(codes) != len(labels):
        raise r.fail("codes", f"must hold one entry per label ({len(labels or ())} labels), got {len(codes)}")
    out: list[LabelCode | None] = []
    for i, entry in enumerate(codes):
        if entry is None:
            out.append(None)
            continue
        c = Reader(entry, r.path(f"codes[{i}]"))
        category = _concept(Reader(entry["category"], c.path("category"))) if entry.get("category") else None
        out.append(LabelCode(*_concept_fields(c), category=category))
    return tuple(out)


def _concept(r: Reader) -> Concept:
    return Concept(*_concept_fields(r))


def _concept_fields(r: Reader) -> tuple[str, str, str]:
    """scheme, value and meaning, each within what DICOM's code sequence attributes hold."""
    fields = []
    for key, limit in (("scheme", 16), ("value", 64), ("meaning", 64)):
        text = r.get(key, str)
        if not text.strip() or len(text) > limit or "\\" in text or not text.isprintable():
            raise r.fail(key, f"must be 1-{limit} printable characters without a backslash; got {text!r}")
        fields.append(text)
    return fields[0], fields[1], fields[2]


def _detection(r: Reader) -> DetectionSpec:
    fmt = r.get("format", str, choices=DETECTION_FORMATS)
    names = {key: r.get(key, str, None) for key in ("boxes", "scores", "labels")}
    if fmt == "boxes":
        names = {key: value or key for key, value in names.items()}  # torchvision's usual output names
    else:
        for key, value in names.items():
            if value is not None:
                raise r.fail(key, "names a post-NMS output; a yolo detector reads its first output")
    spec = DetectionSpec(format=fmt, layout=r.get("layout", str, "auto", choices=YOLO_LAYOUTS), **names,
                         score_threshold=r.get("score_threshold", float, 0.25),
                         iou_threshold=r.get("iou_threshold", float, 0.45),
                         max_detections=r.get("max_detections", int, 100))
    if fmt == "boxes" and spec.layout != "auto":
        raise r.fail("layout", "applies to the yolo format only")
    if not 0.0 <= spec.score_threshold <= 1.0:
        raise r.fail("score_threshold", f"must lie between 0 and 1, got {spec.score_threshold}")
    if not 0.0 < spec.iou_threshold <= 1.0:
        raise r.fail("iou_threshold", f"must lie above 0 and at most 1, got {spec.iou_threshold}")
    if not 1 <= spec.max_detections <= MAX_DETECTIONS:
        raise r.fail("max_detections", f"must lie between 1 and {MAX_DETECTIONS}, got {spec.max_detections}")
    return spec


def _pinned(r: Reader) -> tuple[str, str, int]:
    """A bundle file's path, sha256 and size, checked."""
    path = r.get("path", str)
    if path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        raise r.fail("path", f"must be a relative path inside the bundle, got {path!r}")
    sha = r.get("sha256", str)
    if not _SHA256.fullmatch(sha):
        raise r.fail("sha256", "must be 64 lowercase hexadecimal digits")
    size = r.get("size", int)
    if size < 0:
        raise r.fail("size", f"must be 0 or more, got {size}")
    return path, sha, size


def _example(r: Reader) -> Example:
    path, sha, size = _pinned(r)
    if not path.endswith(".npz"):
        raise r.fail("path", f"must name an .npz file (one array per input name), got {path!r}")
    return Example(path=path, sha256=sha, size=size)


def _artifact(r: Reader) -> Artifact:
    path, sha, size = _pinned(r)
    kind = r.get("kind", str, "portable", choices=ARTIFACT_KINDS)
    requires = _requirement(Reader(r.data["requires"], r.path("requires"))) if r.data.get("requires") else None
    if kind == "portable" and requires is not None:
        raise r.fail("requires", "does not apply to the portable artifact, which must run anywhere")
    if kind != "portable" and requires is None:
        raise r.fail("requires", f"is required for a {kind} artifact: the CPU class it was made for")
    if not path.endswith((".onnx", ".ort")):
        raise r.fail("path", f"must name an .onnx or .ort file, got {path!r}")
    accuracy = r.get("accuracy", dict, None)
    return Artifact(path=path, sha256=sha, size=size, kind=kind, requires=requires,
                    preoptimized=r.get("preoptimized", bool, False), verified=r.get("verified", bool, True),
                    accuracy=accuracy)


def _requirement(r: Reader) -> Requirement:
    arch = r.get("arch", str, choices=ARCHES)
    features = r.get("features", list, [])
    for i, feature in enumerate(features):
        if feature not in CPU_FEATURES:
            raise r.fail(f"features[{i}]", f"is {feature!r}; known features are {', '.join(CPU_FEATURES)}")
    return Requirement(arch, tuple(sorted(set(features))))


def _tuning(r: Reader) -> Tuning:
    requires = _requirement(Reader(r.data.get("requires"), r.path("requires")))
    threads = r.get("intra_op_threads", int, None)
    if threads is not None and threads < 1:
        raise r.fail("intra_op_threads", f"must be 1 or more (or absent: from the CPU quota), got {threads}")
    return Tuning(requires=requires, artifact=r.get("artifact", str, None),
                  graph_optimization_level=r.get("graph_optimization_level", str, None, choices=OPT_LEVELS),
                  intra_op_threads=threads, allow_spinning=r.get("allow_spinning", bool, False),
                  disable_prepacking=r.get("disable_prepacking", bool, False),
                  measured=r.get("measured", dict, None))


def _check(m: Manifest, r: Reader) -> None:
    for key, items in (("inputs", m.inputs), ("outputs", m.outputs), ("artifacts", m.artifacts)):
        names = [getattr(i, "path" if key == "artifacts" else "name") for i in items]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise r.fail(key, f"repeat {', '.join(sorted(dup))}")
    if not any(a.kind == "portable" and a.path.endswith(".onnx") for a in m.artifacts):
        raise r.fail("artifacts", "must include a portable .onnx artifact")
    if sum(a.kind == "portable" for a in m.artifacts) > 1:
        raise r.fail("artifacts", "must include exactly one portable artifact")
    paths = {a.path for a in m.artifacts}
    for i, t in enumerate(m.tuning):
        if t.artifact is not None and t.artifact not in paths:
            raise r.fail(f"tuning[{i}].artifact", f"names {t.artifact!r}, which is not among the artifacts")
    for i, o in enumerate(m.outputs):
        if o.segmentation_type is not None and (m.task != "segmentation" or i):
            raise r.fail(f"outputs[{i}].segmentation_type", "applies to a segmentation model's first output only")
    if m.detection is not None and m.task != "detection":
        raise r.fail("detection", f"applies to the detection task only; this is a {m.task} model")
    if m.example is not None and m.example.path in paths:
        raise r.fail("example.path", f"is {m.example.path!r}, which an artifact uses too")
    if m.task == "tensor":
        for i, spec in enumerate(m.inputs[1:], start=1):
            if spec.image is not None:
                raise r.fail(f"inputs[{i}].image", "applies to a tensor model's first input only: the one an "
                                                   "image sent to /predict or by an event becomes")
        if m.inputs[0].image is not None:
            _check_image_use(m, m.inputs[0], r)
        return
    images = [i for i in m.inputs if i.image is not None]
    if len(m.inputs) != 1 or len(images) != 1:
        raise r.fail("inputs", f"a {m.task} model takes exactly one input with an `image` section")
    out = m.primary_output
    if m.task in ("classification", "detection") and out.decision is not None:
        raise r.fail("outputs[0].decision", "applies to segmentation only")
    if m.task == "detection":
        _check_detection(m, r)
    if m.task == "segmentation":
        if out.decision is None:
            raise r.fail("outputs[0].decision", "is required for segmentation: argmax (one channel per class) "
                                                "or threshold (one probability channel)")
        if images[0].layout == "NF":
            raise r.fail("inputs[0].layout", "NF cannot carry a segmentation image")
    _check_image_use(m, images[0], r)


def _check_image_use(m: Manifest, spec: InputSpec, r: Reader) -> None:
    """What the image section asks of the task: tiling is for segmentation, each frames mode for its tasks."""
    if spec.image.tiling is not None and m.task != "segmentation":
        raise r.fail("inputs[0].image.tiling", f"applies to segmentation only; this is a {m.task} model")
    frames = spec.image.frames
    if frames in FRAME_TASKS and m.task not in FRAME_TASKS[frames]:
        raise r.fail("inputs[0].image.frames", f"{frames} applies to {' and '.join(FRAME_TASKS[frames])} models; "
                                               f"this is a {m.task} model")


def _check_detection(m: Manifest, r: Reader) -> None:
    d = m.detection
    if d is None:
        raise r.fail("detection", "is required for detection: format boxes (post-NMS boxes, scores and labels "
                                  "outputs) or yolo (one raw [1, 4+C, A] or [1, A, 4+C] output)")
    for i, o in enumerate(m.outputs):
        if i and o.labels is not None:
            raise r.fail(f"outputs[{i}].labels", "belong on the first output: a detector's class names")
    if d.format == "yolo":
        if m.primary_output.activation == "softmax":
            raise r.fail("outputs[0].activation", "must be none or sigmoid for yolo class scores")
        return
    names = [o.name for o in m.outputs]
    roles = {"boxes": d.boxes, "scores": d.scores, "labels": d.labels}
    for key, name in roles.items():
        if name not in names:
            raise r.fail(f"detection.{key}", f"names output {name!r}, which is not among the outputs "
                                             f"({', '.join(names)})")
    if len(set(roles.values())) != 3:
        raise r.fail("detection", "boxes, scores and labels must name three different outputs")
    for i, o in enumerate(m.outputs):
        if o.activation != "none":
            raise r.fail(f"outputs[{i}].activation", "must be none: post-NMS scores are final")
