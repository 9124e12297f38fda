"""Answers back as DICOM, with highdicom: a segmentation mask as a DICOM SEG, a classification as a
Comprehensive SR (a TID 1500 measurement report), each referencing the source instance.

highdicom is imported here only, when a DICOM result is asked for: JSON-only calls never pay for it.
The output copies from the source only what referencing it needs (UIDs, geometry) and the patient and
study attributes DICOM requires (`PATIENT`, `STUDY`); everything else of the source stays behind.
"""
from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxfn.bundles.manifest import Concept, LabelCode, Manifest
from onnxfn.errors import BadRequest, InferenceError, NotAcceptable
from onnxfn.tasks.postprocess import class_labels

MEDIA_TYPE = "application/dicom"
MANUFACTURER = "onnxfn"
#: Patient Module and General Study Module attributes of Type 1 and 2: all an instance of the same
#: patient and study must carry. Optional ones (age, weight, history, other IDs...) are not copied.
PATIENT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: What highdicom reads of a source to reference it and place a segmentation on it.
REFERENCE = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns",
             "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated")
GEOMETRY = ("FrameOfReferenceUID", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
            "ImagePositionPatient", "ImageOrientationPatient", "SharedFunctionalGroupsSequence",
            "PerFrameFunctionalGroupsSequence")
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality")
#: Segmented property category and type when the manifest codes no label (SNOMED CT).
DEFAULT_CATEGORY = Concept("SCT", "49755003", "Morphologically Abnormal Structure")
DEFAULT_TYPE = DEFAULT_CATEGORY
AI = Concept("DCM", "123110", "Artificial Intelligence")  # the algorithm family
PROBABILITY = Concept("DCM", "122157", "Probability")
PRIVATE_SCHEME = "99ONNXFN"  # labels without a code in the manifest: value = class index, meaning = label
SERIES_NUMBER = 9001  # a derived series, numbered apart from the scanner's


@dataclass(frozen=True)
class Encoded:
    """A DICOM result: its bytes, the suffix its object takes beside the JSON answer (`.seg.dcm`,
    `.sr.dcm`) and its media type."""
    data: bytes
    suffix: str
    media_type: str = MEDIA_TYPE


def segmentation(source: Any, mask: np.ndarray, labels: Sequence[str], manifest: Manifest, *,
                 probabilities: np.ndarray | None = None) -> bytes:
    """A DICOM SEG of `mask` (HxW class indices, the source image's size) on `source` (the pydicom
    Dataset the pixels came from): one segment per class, numbered as the class index (`labels[i]` names
    class i, index 0 the background, which gets no segment). Binary, or fractional when the manifest's
    `segmentation_type` is fractional and `probabilities` are given: one channel per class (HxWxC, or HxW
    for a single foreground class), values in [0, 1]. An empty mask gives a SEG whose segments are all
    described and empty (one empty frame)."""
    import highdicom as hd

    reference = _reference(source)
    mask = _mask(mask, reference)
    count = max(len(labels), int(mask.max()) + 1, 2)
    spec = manifest.primary_output
    names = [labels[i] if i < len(labels) else str(i) for i in range(count)]
    fractional = spec.segmentation_type == "fractional" and probabilities is not None
    pixels = _fractions(probabilities, mask.shape, count) if fractional else mask
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_lo(manifest.name), family=_code(hd, AI),
        version=_lo(manifest.version), source=MANUFACTURER, parameters={"sha256": manifest.portable.sha256})
    segments = [hd.seg.SegmentDescription(
        segment_number=index, segment_label=_lo(names[index]),
        segmented_property_category=_code(hd, _category(spec, names[index])),
        segmented_property_type=_code(hd, _label_code(spec, names[index]) or DEFAULT_TYPE),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for index in range(1, count)]
    with warnings.catch_warnings():  # highdicom warns quoting attribute values: patient data
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=[reference], pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else
            hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=_lo(manifest.name), software_versions=_lo(manifest.version),
            device_serial_number=manifest.portable.sha256[:16], series_description=_lo(f"{manifest.name} segmentation"),
            content_label="ONNXFN", omit_empty_frames=True)
    return _bytes(seg)


def report(source: Any, result: dict, manifest: Manifest) -> bytes:
    """A Comprehensive SR holding a TID 1500 measurement report on `source`: one measurement group per
    entry of the classification answer's `top` list, best first (tracking identifier `rank N`), each with
    the label's code as its Finding (TID 1501's finding type) and its probability (or score) as a
    measurement, the algorithm identified by the bundle's name, version and sha256."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    reference = _reference(source)
    top = result.get("top") if isinstance(result, dict) else None
    if not top:
        raise InferenceError("a classification SR needs the answer's `top` list (label and probability per "
                             "class); the answer has none", code="bad_output")
    spec = manifest.primary_output
    algorithm = hd.sr.AlgorithmIdentification(name=_lo(manifest.name), version=_lo(manifest.version),
                                              parameters=[f"sha256={manifest.portable.sha256}"])
    image = hd.sr.SourceImageForMeasurementGroup.from_source_image(reference)
    groups = []
    for rank, entry in enumerate(top, start=1):
        label, index = str(entry["label"]), int(entry.get("index", rank - 1))
        key, name = ("probability", PROBABILITY) if "probability" in entry else \
            ("score", Concept(PRIVATE_SCHEME, "score", "Model score"))
        finding = _label_code(spec, label) or Concept(PRIVATE_SCHEME, str(index), _lo(label))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"rank {rank}"),
            algorithm_id=algorithm, source_images=[image], finding_type=_code(hd, finding),
            measurements=[hd.sr.Measurement(name=_code(hd, name), value=float(entry[key]),
                                            unit=codes.UCUM.NoUnits)]))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(manifest), name=_lo(manifest.name), manufacturer_name=MANUFACTURER,
            model_name=_lo(f"{manifest.name} {manifest.version}")))
    context = hd.sr.ObservationContext(observer_device_context=device)
    try:  # the image library (TID 1600) describes the image by its geometry, which not every source has
        content = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
                                          imaging_measurements=groups, referenced_images=[reference])
    except (AttributeError, ValueError, KeyError):
        content = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
                                          imaging_measurements=groups)
    with warnings.catch_warnings():  # highdicom warns quoting attribute values: patient data
        warnings.simplefilter("ignore")
        sr = hd.sr.ComprehensiveSR(
            evidence=[reference], content=content[0], series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
            series_description=_lo(f"{manifest.name} classification"))
    return _bytes(sr)


def encode(source: Any, answer: dict, manifest: Manifest, *, probabilities: np.ndarray | None = None) -> Encoded:
    """The DICOM result of a JSON answer (the body `Service.predict` gives): a SEG from a segmentation
    answer's mask (its base64 PNG, class names from `classes` and the manifest), an SR from a
    classification answer. Any other task has no DICOM form (`NotAcceptable`, 406)."""
    task, result = answer.get("task"), answer.get("result") or {}
    try:
        if task == "segmentation":
            mask = _png(result["mask"]["data"])
            return Encoded(segmentation(source, mask, class_names(manifest, result), manifest,
                                        probabilities=probabilities), ".seg.dcm")
        if task == "classification":
            return Encoded(report(source, result, manifest), ".sr.dcm")
    except (ValueError, TypeError, AttributeError, KeyError) as e:  # highdicom refusing what the source holds
        from onnxfn.codecs.dicom import _reason
        raise BadRequest(f"the DICOM input cannot be referenced by a DICOM result: {_reason(e)}; send a complete "
                         "DICOM object or ask for application/json", code="dicom_source_incomplete") from None
    raise NotAcceptable(f"a {task} answer has no DICOM form (segmentation answers become DICOM SEG, "
                        "classifications DICOM SR): ask for application/json")


def class_names(manifest: Manifest, result: dict | None = None) -> list[str]:
    """Class names by class index, index 0 the background, as the segmentation answer names them: the
    manifest's labels (a threshold model's one label is class 1), and the answer's own for classes past them."""
    names = dict(enumerate(class_labels(manifest.primary_output)))
    names.update({int(c["index"]): str(c["label"]) for c in (result or {}).get("classes", ())})
    return [names.get(i, str(i)) for i in range(max(names, default=0) + 1)]


# ---------------------------------------------------------------- the source

def _reference(source: Any):
    """A copy of what the output may take from the source: references, geometry (only with a Frame of
    Reference: without one, pixel spacing and positions place nothing), the required patient and study
    attributes. No pixel data, nothing else of the patient."""
    from pydicom.dataset import Dataset

    if not isinstance(source, Dataset):
        raise NotAcceptable("a DICOM result (application/dicom) needs a DICOM input to reference; this image was "
                            f"not DICOM ({type(source).__name__}): send a DICOM file or ask for application/json")
    missing = [k for k in REQUIRED if not source.get(k)]
    if missing:
        raise BadRequest(f"the DICOM input lacks {', '.join(missing)}: a DICOM result must reference its source "
                         "instance, study and series; send a complete DICOM object or ask for application/json",
                         code="dicom_source_incomplete")
    if int(source.get("NumberOfFrames") or 1) > 1:
        raise NotAcceptable("DICOM results of multi-frame inputs are not supported yet: ask for application/json")
    keep = REFERENCE + PATIENT + STUDY
    if source.get("FrameOfReferenceUID"):
        keep += GEOMETRY
    reference = Dataset()
    for keyword in keep:
        if keyword in source:
            reference[keyword] = source[keyword]
    for keyword in PATIENT + STUDY[1:]:  # Type 2: present, empty when unknown or not a valid value
        if keyword not in reference or not _valid(reference[keyword]):
            setattr(reference, keyword, None)
    if getattr(source, "file_meta", None) is not None:
        reference.file_meta = source.file_meta
    return reference


def _valid(element) -> bool:
    """Whether a date or time holds what its VR allows (highdicom refuses a source's '14:04:38' as TM)."""
    from pydicom.valuerep import DA, TM

    parse = {"DA": DA, "TM": TM}.get(element.VR)
    if parse is None or not element.value:
        return True
    try:
        parse(str(element.value))
    except ValueError:
        return False
    return True


def _mask(mask: np.ndarray, reference) -> np.ndarray:
    """The mask as highdicom takes a label map: the source's rows and columns, class indices as uint8."""
    mask = np.asarray(mask)
    shape = (int(reference.Rows), int(reference.Columns))
    if mask.shape != shape:
        raise InferenceError(f"the mask is {'x'.join(map(str, mask.shape))} pixels but the DICOM source is "
                             f"{shape[0]}x{shape[1]} (rows x columns): a SEG mask must match its source image",
                             code="mask_mismatch")
    if mask.dtype.kind not in "biu" or (mask.size and (mask.min() < 0 or mask.max() > 255)):
        raise InferenceError(f"the mask must hold class indices 0-255, got {mask.dtype}", code="mask_mismatch")
    return mask.astype(np.uint8, copy=False)


def _fractions(probabilities: np.ndarray, shape: tuple[int, ...], count: int) -> np.ndarray:
    """Per-segment fractions (1, rows, columns, segments) from per-class probabilities."""
    p = np.asarray(probabilities, dtype=np.float32)
    if p.shape == shape:
        p = p[..., None]
    if p.shape[:-1] != shape or p.shape[-1] not in (count - 1, count):
        raise InferenceError(f"the probabilities are {'x'.join(map(str, p.shape))}; a fractional SEG of a "
                             f"{'x'.join(map(str, shape))} mask with {count - 1} segment(s) needs one channel per "
                             "class (the background's may be left out)", code="mask_mismatch")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise InferenceError("the probabilities must lie in [0, 1]", code="mask_mismatch")
    return p[None, ..., p.shape[-1] - (count - 1):]  # highdicom's frames, rows, columns, segments


# ---------------------------------------------------------------- codes

def _label_code(spec, label: str) -> LabelCode | None:
    if spec.codes is None or spec.labels is None or label not in spec.labels:
        return None
    return spec.codes[spec.labels.index(label)]


def _category(spec, label: str) -> Concept:
    code = _label_code(spec, label)
    return code.category if code is not None and code.category is not None else DEFAULT_CATEGORY


def _code(hd, concept: Concept):
    return hd.sr.CodedConcept(value=concept.value, scheme_designator=concept.scheme, meaning=concept.meaning)


def _device_uid(manifest: Manifest) -> str:
    """The same UID for the same artifact: the observer device is the model."""
    from pydicom.uid import generate_uid
    return generate_uid(entropy_srcs=["onnxfn", manifest.name, manifest.version, manifest.portable.sha256])


def _lo(text: str) -> str:
    """A text value within DICOM's LO limit (64 characters), without the backslash LO forbids."""
    return text.replace("\\", "/")[:64]


def _png(data: str) -> np.ndarray:
    from PIL import Image as PILImage
    return np.asarray(PILImage.open(io.BytesIO(base64.b64decode(data))))


def _bytes(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
