"""The core: a body in, an answer out. It knows bundles, arrays and tasks; it knows
nothing of Fn, gateways or events (adapters do)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from onnxfn.codecs import binary, payload
from onnxfn.codecs.image import Header
from onnxfn.tasks import detect, postprocess, preprocess
from onnxfn.errors import BadRequest, InferenceError, NotAcceptable, NotFound, ResponseTooLarge
from onnxfn.runtime.loader import Runner
from onnxfn.runtime.model import Model
from onnxfn.bundles.manifest import InputSpec
from onnxfn.runtime import admission, memory, session as sessions
from onnxfn.settings import Settings


@dataclass
class Answer:
    """What an inference call answers: the JSON body, and for the call's log line whether the call was
    cold and where its time went (both are in the body too, where the protocol puts them); `tensors` holds
    the data of the outputs asked for as binary (OIP binary extension), in the order the body lists them;
    `dicom` the DICOM result (`dicom_result.Encoded`: a SEG or SR) when one was asked for and could be made,
    and `dicom_skipped` why not when it was optional."""
    body: dict
    cold: bool
    timings_ms: dict[str, float]
    tensors: list[bytes] = field(default_factory=list)
    dicom: Any = None
    dicom_skipped: str = ""


#: `Service.predict`'s `dicom`: a DICOM result must be made (406 when it cannot), or is made when it can be.
DICOM_REQUIRED, DICOM_OPTIONAL = "required", "optional"
#: the tasks whose answers have a DICOM form (SEG, SR)
DICOM_TASKS = ("segmentation", "classification")
#: why a multi-frame input has no DICOM result (406 when one is required)
MULTI_FRAME_DICOM = ("DICOM results (application/dicom) of multi-frame inputs are not supported yet: ask for "
                     "application/json, whose answer holds every frame's result")


class Timer:
    """Milliseconds per step of one call, and the call's total."""

    def __init__(self):
        self.ms: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def step(self, name: str):
        """Time a block; a step timed twice adds up."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round((time.perf_counter() - started) * 1000 + self.ms.get(name, 0.0), 3)

    def total(self) -> dict[str, float]:
        """Every step's time and the total since the timer was made."""
        return {**self.ms, "total": round((time.perf_counter() - self._start) * 1000, 3)}


class Service:
    """The core: predict (an image in, a task answer out), infer (OIP tensors in and out) and metadata,
    over the container's one model."""

    def __init__(self, settings: Settings, runner: Runner | None = None):
        self.settings = settings
        self.runner = runner or Runner(settings)
        self._memory_limit: list[int | None] = []  # found on the first admission: fixed for a container's life

    # -- model ------------------------------------------------------------------------
    def model(self, timer: Timer | None = None, name: str | None = None, version: str | None = None,
              deadline: float | None = None, inference: bool = False) -> tuple[Model, bool]:
        """The loaded model and whether this call was cold; a name or version it does not serve is a 404.
        The load's time (and on a cold call its phases) go into `timer`."""
        started = time.perf_counter()
        model, cold = self.runner.get(deadline, inference)
        if timer is not None:
            timer.ms["load"] = round((time.perf_counter() - started) * 1000, 3) if cold else 0.0
            if cold:  # where the cold start went: fetch, engine import, session creation, warm-up
                timer.ms.update(model.phases)
        m = model.manifest
        if name is not None and name != m.name:
            raise NotFound(f"model {name!r} is not served here; this function serves {m.name!r}",
                           code="model_not_found")
        if version is not None and version != m.version:
            raise NotFound(f"model {m.name!r} version {version!r} is not served here; the version served is "
                           f"{m.version!r}", code="version_not_found")
        return model, cold

    def run(self, model: Model, feeds: dict, outputs: list[str] | None, deadline: float | None):
        """Run the model; the outputs, and the model that ran. A model's first inference is its warm-up: if it
        fails, `Runner.recheck` tells a bad input from an artifact this CPU cannot run, which is replaced
        by the next one (the portable model at last) and the call is run again on it."""
        try:
            values = model.run(feeds, outputs)
        except InferenceError:
            if model.checked:
                raise
            fresh = self.runner.recheck(model, deadline)
            if fresh is None:
                raise
            model = fresh
            values = model.run(feeds, outputs)
        model.checked = True
        return values, model

    def describe(self, model: Model, cold: bool, timer: Timer) -> dict:
        """What every answer reports of the model, the runtime, the cold flag and the timings."""
        m = model.manifest
        return {"model": {"name": m.name, "version": m.version, "sha256": m.portable.sha256},
                "runtime": dict(model.runtime),
                "cold": cold, "timings_ms": timer.total()}

    # -- image in, task answer out ----------------------------------------------------
    def predict(self, data: bytes, content_type: str | None, deadline: float | None = None,
                binary_output: bool = False, dicom: str | None = None) -> Answer:
        """An image (raw, multipart or base64 JSON; PNG, JPEG, TIFF, BMP or DICOM) in, the task's answer out.
        A `tensor` bundle whose first input has an `image` section answers every output of the model as OIP
        outputs in `result.outputs`: JSON, or with `binary_output` as binary data in `Answer.tensors` (the
        entries then carry `binary_data_size`, as the OIP binary extension answers). `dicom` asks for the
        answer as DICOM too (`Answer.dicom`, a SEG or SR referencing the input): `DICOM_REQUIRED` refuses
        (406) an input or model that cannot have one, before running the model when it can tell;
        `DICOM_OPTIONAL` makes it when it can and says why not in `Answer.dicom_skipped`."""
        timer = Timer()
        with timer.step("decode"):
            body = payload.classify(data, content_type, self.settings.max_body_bytes)
        if body.kind == "json":
            raise BadRequest("this route takes an image; send OIP tensors to /v2/models/{name}/infer",
                             code="image_expected")
        if dicom == DICOM_REQUIRED and body.kind != "dicom":
            raise NotAcceptable(f"a DICOM result (application/dicom) needs a DICOM input to reference; this input "
                                f"is {body.kind}: send a DICOM file or ask for application/json")
        with timer.step("decode"):
            payload.preload(body)  # a cold call's decoder imports overlap the model's load
        model, cold = self.model(timer, deadline=deadline, inference=True)
        m = model.manifest
        if dicom == DICOM_REQUIRED and m.task not in DICOM_TASKS:
            raise NotAcceptable(f"model {m.name!r} answers {m.task}, which has no DICOM form (segmentation "
                                "answers become DICOM SEG, classifications DICOM SR): ask for application/json")
        spec = image_input(m)
        mode = spec.image.frames
        plans: list[admission.Plan] = []

        def admit(header: Header) -> None:
            if header.frames > 1 and dicom == DICOM_REQUIRED:
                raise NotAcceptable(f"{MULTI_FRAME_DICOM} (this file holds {header.frames} frames)")
            plans.append(self.admit(model, spec, header))
        with timer.step("decode"):  # the header is admitted (whole, tiled or 413) before the pixels are decoded
            if mode is None:  # multi-frame files are refused (400 multi_frame, naming the `frames` option)
                images = [payload.decode_image(body, self.settings.max_pixels, admit)]
            else:
                images = payload.decode_frames(body, self.settings.max_pixels, admit)
        count = len(images)
        info = {"format": images[0].format, "width": images[0].width, "height": images[0].height,
                "channels": images[0].channels, "bits": images[0].bits}
        if count > 1 or mode == "volume":
            info["frames"] = count
        source = images[0].source
        run = _Run(self, model, spec, deadline, timer, bool(plans) and plans[0].tiled, binary_output)
        run.fractional = (dicom in (DICOM_REQUIRED, DICOM_OPTIONAL) and m.task == "segmentation"
                          and m.primary_output.segmentation_type == "fractional")
        extra: dict = {}
        if mode == "volume":
            result, tensors = run.volume(images)
            extra["volume"] = run.described_volume
        elif mode == "each" and count > 1:
            result, tensors = {"frames": []}, []
            while images:  # each frame's arrays are dropped before the next frame runs
                image = images.pop(0)
                frame = image.frame
                entry, _ = run.image(image)
                del image
                result["frames"].append({"frame": frame, **entry})
        else:  # "first", or a single frame
            del images[1:]
            result, tensors = run.image(images.pop())
        model = run.model
        answer = {"task": m.task, "result": result, "image": info, **extra}
        if run.tiled:
            t = spec.image.tiling
            answer["tiling"] = {"tile": list(t.tile), "overlap": t.overlap, "blend": t.blend}
        encoded, skipped = None, ""
        if dicom in (DICOM_REQUIRED, DICOM_OPTIONAL):
            with timer.step("dicom"):
                if count > 1:  # `admit` refused a required one before decoding
                    skipped = MULTI_FRAME_DICOM
                else:
                    encoded, skipped = self.as_dicom(source, answer, m, required=dicom == DICOM_REQUIRED,
                                                     probabilities=run.probabilities)
        del source
        described = self.describe(model, cold, timer)
        return Answer({**answer, **described}, cold, described["timings_ms"], tensors, encoded, skipped)

    def as_dicom(self, source, answer: dict, manifest, required: bool, probabilities=None) -> tuple[Any, str]:
        """The DICOM result of an answer (`dicom_result.encode`; `probabilities` make a fractional SEG) and, when it
        is optional and cannot be made (not a DICOM input, a multi-frame one, one lacking the UIDs a reference
        needs, a task without a DICOM form), None and why."""
        from onnxfn.codecs import dicom_result  # highdicom comes with it, on the first DICOM result only
        if not required and (source is None or manifest.task not in DICOM_TASKS):
            why = "the input is not DICOM" if source is None else f"a {manifest.task} answer has no DICOM form"
            return None, why
        try:
            return dicom_result.encode(source, answer, manifest, probabilities=probabilities), ""
        except (BadRequest, NotAcceptable) as e:
            if required:
                raise
            return None, e.message

    def admit(self, model: Model, spec: InputSpec, header: Header) -> "admission.Plan":
        """Whether an image with this header fits the function's memory, whole or tile by tile
        (`admission.decide`); `InsufficientMemory` (413) when it does not."""
        if not self._memory_limit:  # Fn gives a container its memory when it starts; reading it cost 0.1 ms a call
            self._memory_limit.append(memory.limit(self.settings))
        limit = self._memory_limit[0]
        available = memory.available(limit)
        m = model.manifest
        segmentation = m.task == "segmentation"
        channels = out_channels(model, spec) if segmentation else 1
        tileable = segmentation and spec.image.tiling is not None
        tiled = (lambda: admission.tiled(header, spec, model.memory, channels)) if tileable else None
        return admission.decide(header, spec, model.memory, channels, segmentation, available, tiled, limit)

    # -- Open Inference Protocol ----------------------------------------------------------
    def infer(self, document, name: str | None = None, version: str | None = None,
              deadline: float | None = None) -> Answer:
        """An OIP v2 inference request in, OIP outputs out (with the call's figures in `parameters`). `document`
        is the JSON request, or a `binary.Framed` one (binary extension); outputs asked for as binary come back
        in `Answer.tensors`."""
        from onnxfn.codecs import tensor  # OIP only: an image's cold path does without it
        timer = Timer()
        model, cold = self.model(timer, name, version, deadline, inference=True)
        m = model.manifest
        with timer.step("decode"):
            if isinstance(document, binary.Framed):
                request = binary.parse_request(document, m.inputs)
            else:
                request = tensor.parse_request(document, m.inputs)
        available = list(model.output_shapes)
        unknown = [n for n in request.outputs or () if n not in available]
        if unknown:
            raise BadRequest(f"requested output(s) {', '.join(map(repr, unknown))} do not exist; the model's "
                             f"outputs are {', '.join(map(repr, available))}", code="unknown_output")
        with timer.step("inference"):
            outputs, model = self.run(model, request.inputs, request.outputs, deadline)
        with timer.step("postprocess"):
            check_answer(outputs, request.wants_binary, self.settings.max_response_bytes)
            encoded, tensors = [], []
            for n, v in outputs.items():
                if request.wants_binary(n):
                    entry, data = binary.encode(n, v)
                    tensors.append(data)
                else:
                    entry = tensor.encode(n, v)
                encoded.append(entry)
        described = self.describe(model, cold, timer)
        answer = {"model_name": m.name, "model_version": m.version, "outputs": encoded,
                  "parameters": {"cold": cold, "timings_ms": described["timings_ms"],
                                 "sha256": described["model"]["sha256"], **described["runtime"]}}
        if request.id is not None:
            answer["id"] = request.id
        return Answer(answer, cold, described["timings_ms"], tensors)

    def metadata(self, name: str | None = None, version: str | None = None, deadline: float | None = None) -> dict:
        """OIP model metadata: inputs as the manifest declares them, outputs as the session has them."""
        from onnxfn.codecs import tensor
        model, _ = self.model(None, name, version, deadline)
        m = model.manifest
        return {"name": m.name, "versions": [m.version], "platform": "onnxruntime_onnx",
                "inputs": [{"name": i.name, "datatype": tensor.datatype(i.dtype), "shape": tensor.shape_of(i.shape)}
                           for i in m.inputs],
                "outputs": [{"name": o.name, "datatype": tensor.datatype(sessions.dtype(o.type)),
                             "shape": tensor.shape_of(o.shape)} for o in model.session.get_outputs()],
                "parameters": {"task": m.task, "sha256": m.portable.sha256}}


class _Run:
    """One predict call's inference, an image (or a frame, or a volume) at a time: pre-processing (or tiles), the
    model, post-processing into the task's result, timed into the call's timer. `model` is the model that ran
    last (a failed first run may swap it, `Service.run`)."""

    def __init__(self, service: Service, model: Model, spec: InputSpec, deadline: float | None, timer: Timer,
                 tiled: bool, binary_output: bool):
        self.service, self.model, self.spec, self.deadline, self.timer = service, model, spec, deadline, timer
        self.tiled, self.binary_output = tiled, binary_output
        m = model.manifest
        if m.task == "tensor":
            self.names = None  # every output
        else:
            self.names = detect.output_names(m) if m.task == "detection" else [m.primary_output.name]
        self.described_volume: dict | None = None
        self.fractional = False  # keep the last image's class probabilities (a fractional DICOM SEG is asked for)
        self.probabilities = None

    def infer(self, feed) -> dict:
        """The model's outputs for one input tensor."""
        outputs, self.model = self.service.run(self.model, {self.spec.name: feed}, self.names, self.deadline)
        return outputs

    def image(self, image) -> tuple[dict, list[bytes]]:
        """The task's result for one 2-D image (whole or tile by tile), and a tensor task's binary outputs."""
        m, timer = self.model.manifest, self.timer
        if self.tiled:
            from onnxfn.tasks import tiling
            primary = m.primary_output.name
            with timer.step("inference"):  # tile by tile: pre-processing, inference and blending together
                output, geometry = tiling.run(image, self.spec, lambda feed: self.infer(feed)[primary])
            outputs = {primary: output}
        else:
            with timer.step("preprocess"):
                feed, geometry = preprocess.prepare(image, self.spec)
            with timer.step("inference"):
                outputs = self.infer(feed)
            del feed
        with timer.step("postprocess"):
            return self.result(outputs, geometry)

    def volume(self, images: list) -> tuple[dict, list[bytes]]:
        """The task's result for frames stacked as one volume (`tasks.volume`), run once; `images` is emptied
        once stacked. A segmentation's result is one mask per frame, in the file's order."""
        from onnxfn.tasks import volume  # 3-D bundles only: not on an image's cold path
        m, timer = self.model.manifest, self.timer
        with timer.step("preprocess"):
            feed, geometry, stacked = volume.stack(images, self.spec)
        images.clear()
        with timer.step("inference"):
            outputs = self.infer(feed)
        del feed
        self.described_volume = stacked.describe()
        with timer.step("postprocess"):
            if m.task != "segmentation":
                return self.result(outputs, geometry)
            out = m.primary_output
            planes = volume.planes(outputs.pop(out.name), self.spec, stacked, out.name)
            return {"frames": [{"frame": i, **postprocess.segment(plane, out, flat, geometry)}
                               for i, (plane, flat) in enumerate(planes)]}, []

    def result(self, outputs: dict, geometry) -> tuple[dict, list[bytes]]:
        """The task's result from the model's outputs, and a tensor task's binary outputs."""
        m = self.model.manifest
        if m.task == "tensor":
            check_answer(outputs, lambda _: self.binary_output, self.service.settings.max_response_bytes)
            return oip_outputs(outputs, self.binary_output)
        if m.task == "detection":
            return detect.detect(outputs, m, geometry), []
        if m.task == "classification":
            return postprocess.classify(outputs[m.primary_output.name], m.primary_output,
                                        self.service.settings.top_k), []
        output = outputs[m.primary_output.name]
        if self.fractional:
            self.probabilities = postprocess.probabilities(output, m.primary_output, self.spec, geometry)
        return postprocess.segment(output, m.primary_output, self.spec, geometry), []


def image_input(m) -> InputSpec:
    """The input an image sent to /predict becomes: an image task's image input, or a tensor model's first
    input when it has an `image` section and is the model's only input; a 400 otherwise."""
    if m.task != "tensor":
        return m.image_input
    spec = m.inputs[0]
    if spec.image is None:
        raise BadRequest(f"model {m.name!r} is a tensor model: send OIP tensors to /v2/models/{m.name}/infer "
                         "(it takes images when packaged with --image-input)", code="tensor_model")
    if len(m.inputs) > 1:
        raise BadRequest(f"model {m.name!r} takes inputs {', '.join(repr(i.name) for i in m.inputs[1:])} besides "
                         f"the image: send OIP tensors to /v2/models/{m.name}/infer", code="tensor_model")
    return spec


#: how many elements of an output are JSON-encoded to estimate the size of all of them
SAMPLE = 1024


def check_answer(outputs: dict, binary_output, limit: int) -> None:
    """Refuse an answer larger than `limit` (ONNXFN_MAX_RESPONSE_BYTES) before it is built: binary outputs take
    their bytes, JSON ones the encoded size of a sample of their values times their count. `binary_output(name)`
    tells whether an output is asked for as binary."""
    import json

    import numpy as np

    from onnxfn.codecs import tensor

    total = 0
    for name, value in outputs.items():
        value = np.asarray(value)
        if binary_output(name):
            total += value.nbytes if value.dtype.kind not in "OUS" else sum(len(str(v)) + 4 for v in value.flat)
        elif value.size:
            sample = tensor.encode(name, value.reshape(-1)[:SAMPLE])["data"]
            total += len(json.dumps(sample, separators=(",", ":"))) * value.size // len(sample)
    if total > limit:
        names = ", ".join(f"{n!r} {list(np.shape(v))}" for n, v in outputs.items())
        raise ResponseTooLarge(f"the answer would be about {total:,} bytes (outputs {names}), over the limit of "
                               f"{limit:,} (ONNXFN_MAX_RESPONSE_BYTES): ask for fewer outputs, for binary outputs "
                               "(binary_data_output), send a smaller input, or use the event route, which writes "
                               "answers to storage")


def out_channels(model: Model, spec: InputSpec) -> int:
    """The channel count of a segmentation model's primary output (its layout follows the input's), 1 where
    the session leaves it dynamic."""
    shape = model.output_shapes.get(model.manifest.primary_output.name) or []
    axis = spec.axis("C")
    if axis is not None and len(shape) == len(spec.layout) and isinstance(shape[axis], int) and shape[axis] > 0:
        return shape[axis]
    return 1


def oip_outputs(outputs: dict, binary_output: bool = False) -> tuple[dict, list[bytes]]:
    """A tensor task's `result`: `{"outputs": [...]}` as OIP outputs (JSON data, or `binary_data_size` with the
    bytes in the returned list, in order, when `binary_output`)."""
    from onnxfn.codecs import tensor
    encoded, tensors = [], []
    for name, value in outputs.items():
        if binary_output:
            entry, data = binary.encode(name, value)
            tensors.append(data)
        else:
            entry = tensor.encode(name, value)
        encoded.append(entry)
    return {"outputs": encoded}, tensors
