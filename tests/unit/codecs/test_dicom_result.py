"""dicom_result.py: answers back as DICOM SEG and SR, read back with highdicom: pixels per segment, label
and probability, references to the source, and only the patient and study attributes DICOM requires."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import io
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

from onnxfn.bundles import manifest as manifests
from onnxfn.codecs import dicom_result
from onnxfn.errors import BadRequest, InferenceError, NotAcceptable
from onnxfn.service import Service
from onnxfn.settings import Settings
from tests.support.images import pydicom_file
from tests.support.models import MODELS

SAMPLES = MODELS.parent / "samples"
SOURCES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm", "ExplVR_BigEnd.dcm", "phantom.dcm"]
LIVER = {"scheme": "SCT", "value": "10200004", "meaning": "Liver",
         "category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"}}
SEGMENTER = {
    "name": "organs", "version": "2.1", "task": "segmentation",
    "inputs": [{"name": "ct", "dtype": "float32", "shape": [1, 1, "H", "W"], "layout": "NCHW", "image": {}}],
    "outputs": [{"name": "logits", "activation": "softmax", "decision": "argmax",
                 "labels": ["background", "liver", "lesion"], "codes": [None, LIVER, None]}],
    "artifacts": [{"path": "model.onnx", "sha256": "ab" * 32, "size": 1}],
}
CLASSIFIER = {
    "name": "effusion-net", "version": "3", "task": "classification",
    "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 1, 64, 64], "layout": "NCHW", "image": {}}],
    "outputs": [{"name": "p", "activation": "softmax", "labels": ["normal", "effusion", "other"],
                 "codes": [None, {"scheme": "SCT", "value": "60046008", "meaning": "Pleural effusion"}, None]}],
    "artifacts": [{"path": "model.onnx", "sha256": "cd" * 32, "size": 1}],
}
ANSWER = {"label": "effusion", "probability": 0.875,
          "top": [{"index": 1, "label": "effusion", "probability": 0.875},
                  {"index": 0, "label": "normal", "probability": 0.1},
                  {"index": 2, "label": "other", "probability": 0.025}]}
#: Patient and study values a source may hold that no result may carry.
PRIVATE = {"PatientAge": "077Y", "PatientWeight": "81.5", "PatientAddress": "SECRET-ADDRESS-STREET",
           "PatientComments": "SECRET-COMMENT", "AdditionalPatientHistory": "SECRET-HISTORY",
           "StudyDescription": "SECRET-STUDY-DESCRIPTION", "InstitutionName": "SECRET-HOSPITAL",
           "OtherPatientIDs": "SECRET-OTHER-ID", "EthnicGroup": "SECRETETHNIC",
           "PerformingPhysicianName": "SECRET^PHYSICIAN"}


def source(name: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(SAMPLES / name if name == "phantom.dcm" else pydicom_file(name))
    for keyword, value in PRIVATE.items():
        setattr(ds, keyword, value)
    return ds


def manifest(document: dict, **output) -> manifests.Manifest:
    document = copy.deepcopy(document)
    document["outputs"][0].update(output)
    return manifests.parse(document)


def two_classes(ds: pydicom.Dataset) -> np.ndarray:
    mask = np.zeros((ds.Rows, ds.Columns), np.uint8)
    mask[ds.Rows // 4: ds.Rows // 2, ds.Columns // 5: ds.Columns // 2] = 1
    mask[-(ds.Rows // 4):, -(ds.Columns // 3):] = 2
    mask[0, 0] = 2
    return mask


def read_seg(data: bytes) -> hd.seg.Segmentation:
    return hd.seg.segread(io.BytesIO(data))


def segment_pixels(seg: hd.seg.Segmentation, ds: pydicom.Dataset, number: int) -> np.ndarray:
    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], segment_numbers=[number],
                                               assert_missing_frames_are_empty=True)
    return pixels[0, :, :, 0]


# ------------------------------------------------------------------ SEG

@pytest.mark.parametrize("name", SOURCES)
def test_seg_round_trip_per_segment_with_codes_and_references(name):
    ds, m = source(name), manifest(SEGMENTER)
    mask = two_classes(ds)
    data = dicom_result.segmentation(ds, mask, dicom_result.class_names(m), m)
    seg = read_seg(data)
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG" and seg.Manufacturer == "onnxfn"
    for number in (1, 2):
        assert np.array_equal(segment_pixels(seg, ds, number), (mask == number).astype(np.uint8)), number
    described = {d.segment_number: d for d in seg.SegmentSequence}
    assert sorted(described) == [1, 2]  # the background gets no segment
    liver, lesion = described[1], described[2]
    assert (liver.segment_label, lesion.segment_label) == ("liver", "lesion")
    assert liver.segmented_property_type.value == "10200004" and liver.segmented_property_type.scheme_designator == "SCT"
    assert liver.segmented_property_category.value == "123037004"
    assert lesion.segmented_property_type.value == dicom_result.DEFAULT_TYPE.value  # no code: the default
    assert lesion.segmented_property_category.value == dicom_result.DEFAULT_CATEGORY.value
    algorithm = lesion.algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("organs", "2.1")
    assert "ab" * 32 in algorithm.AlgorithmParameters
    # references: the source instance, its study, and a new series and instance
    assert seg.StudyInstanceUID == ds.StudyInstanceUID
    assert seg.SeriesInstanceUID != ds.SeriesInstanceUID and seg.SOPInstanceUID != ds.SOPInstanceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == ds.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPClassUID == ds.SOPClassUID
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "FrameOfReferenceUID" in ds:
        assert seg.FrameOfReferenceUID == ds.FrameOfReferenceUID
        assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == \
            [float(v) for v in ds.PixelSpacing]
        assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
            [float(v) for v in ds.ImageOrientationPatient]
        position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == [float(v) for v in ds.ImagePositionPatient]
    else:  # a secondary capture or ultrasound image: no patient space to place the segments in
        assert "FrameOfReferenceUID" not in seg and "PixelMeasuresSequence" not in shared


@pytest.mark.parametrize("name", SOURCES)
def test_results_carry_the_required_patient_and_study_attributes_and_nothing_else(name):
    ds = source(name)
    seg = dicom_result.segmentation(ds, two_classes(ds), ["background", "lesion", "cyst"], manifest(SEGMENTER))
    sr = dicom_result.report(ds, ANSWER, manifest(CLASSIFIER))
    for data in (seg, sr):
        out = pydicom.dcmread(io.BytesIO(data))
        for keyword in dicom_result.PATIENT + dicom_result.STUDY:
            assert keyword in out, keyword
            if dicom_result._valid(ds[keyword]) if keyword in ds else False:
                assert str(out[keyword].value or "") == str(ds[keyword].value or ""), keyword
        for keyword, value in PRIVATE.items():
            assert keyword not in out and value.encode() not in data, keyword
        for element in ds:  # nothing else of the patient: every other source value stays behind
            if element.keyword.startswith("Patient") and element.keyword not in dicom_result.PATIENT:
                assert element.keyword not in out, element.keyword


def test_an_empty_mask_gives_described_empty_segments():
    ds, m = source("CT_small.dcm"), manifest(SEGMENTER)
    seg = read_seg(dicom_result.segmentation(ds, np.zeros((ds.Rows, ds.Columns), np.uint8),
                                             dicom_result.class_names(m), m))
    assert [d.segment_number for d in seg.SegmentSequence] == [1, 2]
    for number in (1, 2):
        assert not segment_pixels(seg, ds, number).any()


def test_a_threshold_model_has_one_segment_named_by_its_label():
    m = manifests.parse(json.loads((MODELS / "lesion-unet" / "manifest.json").read_text()))
    assert dicom_result.class_names(m) == ["background", "lesion"]
    ds = source("phantom.dcm")
    mask = (two_classes(ds) > 0).astype(np.uint8)
    seg = read_seg(dicom_result.segmentation(ds, mask, dicom_result.class_names(m), m))
    assert [(d.segment_number, d.segment_label) for d in seg.SegmentSequence] == [(1, "lesion")]
    assert np.array_equal(segment_pixels(seg, ds, 1), mask)
    assert seg.SegmentSequence[0].algorithm_identification[0].AlgorithmParameters.endswith(m.portable.sha256)


def test_fractional_seg_holds_the_probabilities_when_the_manifest_asks():
    ds = source("MR_small.dcm")
    rng = np.random.default_rng(7)
    probabilities = rng.dirichlet(np.ones(3), size=(ds.Rows, ds.Columns)).astype(np.float32)
    mask = probabilities.argmax(axis=2).astype(np.uint8)
    fractional = manifest(SEGMENTER, segmentation_type="fractional")
    seg = read_seg(dicom_result.segmentation(ds, mask, dicom_result.class_names(fractional), fractional,
                                             probabilities=probabilities))
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    for number in (1, 2):
        pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], segment_numbers=[number])[0, :, :, 0]
        assert np.abs(pixels - probabilities[..., number]).max() <= 0.5 / 255 + 1e-6
    # without probabilities, or when the manifest does not ask: binary
    binary = read_seg(dicom_result.segmentation(ds, mask, ["background", "a", "b"], fractional))
    assert binary.SegmentationType == "BINARY"
    plain = read_seg(dicom_result.segmentation(ds, mask, ["background", "a", "b"], manifest(SEGMENTER),
                                               probabilities=probabilities))
    assert plain.SegmentationType == "BINARY"
    with pytest.raises(InferenceError, match="one channel per class") as wrong:
        dicom_result.segmentation(ds, mask, ["background", "a", "b"], fractional, probabilities=probabilities[:, :5])
    assert wrong.value.code == "mask_mismatch"
    with pytest.raises(InferenceError, match=r"\[0, 1\]"):
        dicom_result.segmentation(ds, mask, ["background", "a", "b"], fractional, probabilities=probabilities * 2)


def test_a_mask_of_another_size_is_refused_naming_both_sizes():
    ds, m = source("CT_small.dcm"), manifest(SEGMENTER)
    with pytest.raises(InferenceError) as info:
        dicom_result.segmentation(ds, np.zeros((64, 128), np.uint8), ["background", "a"], m)
    assert (info.value.status, info.value.code) == (500, "mask_mismatch")
    assert "64x128" in info.value.message and "128x128" in info.value.message
    with pytest.raises(InferenceError, match="class indices"):
        dicom_result.segmentation(ds, np.zeros((128, 128), np.float32), ["background", "a"], m)


@pytest.mark.parametrize("bad", [None, np.zeros((8, 8)), b"DICM", {"SOPInstanceUID": "1.2"}])
def test_a_non_dicom_source_is_not_acceptable(bad):
    for call in (lambda: dicom_result.segmentation(bad, np.zeros((8, 8), np.uint8), ["b", "a"], manifest(SEGMENTER)),
                 lambda: dicom_result.report(bad, ANSWER, manifest(CLASSIFIER))):
        with pytest.raises(NotAcceptable) as info:
            call()
        assert (info.value.status, info.value.code) == (406, "not_acceptable")
        assert "application/json" in info.value.message


def test_a_source_without_uids_or_with_frames_is_refused_clearly():
    ds = source("CT_small.dcm")
    del ds.StudyInstanceUID
    with pytest.raises(BadRequest, match="lacks StudyInstanceUID") as info:
        dicom_result.report(ds, ANSWER, manifest(CLASSIFIER))
    assert (info.value.status, info.value.code) == (400, "dicom_source_incomplete")
    frames = pydicom.dcmread(pydicom_file("SC_rgb_rle_2frame.dcm"))
    with pytest.raises(NotAcceptable, match="multi-frame") as info:
        dicom_result.segmentation(frames, np.zeros((2, 100, 100), np.uint8), ["b", "a"], manifest(SEGMENTER))
    assert (info.value.status, info.value.code) == (406, "not_acceptable")


# ------------------------------------------------------------------ SR

def groups(data: bytes):
    return hd.sr.srread(io.BytesIO(data)).content.get_image_measurement_groups()


@pytest.mark.parametrize("name", SOURCES)
def test_sr_round_trip_finds_label_probability_and_source(name):
    ds, m = source(name), manifest(CLASSIFIER)
    data = dicom_result.report(ds, ANSWER, m)
    sr = hd.sr.srread(io.BytesIO(data))
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and sr.Manufacturer == "onnxfn"
    assert sr.StudyInstanceUID == ds.StudyInstanceUID and sr.SeriesInstanceUID != ds.SeriesInstanceUID
    found = groups(data)
    assert [g.tracking_identifier for g in found] == ["rank 1", "rank 2", "rank 3"]
    best = found[0]
    assert (best.finding_type.value, best.finding_type.scheme_designator, best.finding_type.meaning) == \
        ("60046008", "SCT", "Pleural effusion")  # the manifest's code
    assert found[1].finding_type.meaning == "normal" and found[1].finding_type.value == "0"  # no code: private
    for group, entry in zip(found, ANSWER["top"]):
        (measurement,) = group.get_measurements()
        assert measurement.name.meaning == "Probability" and measurement.value == pytest.approx(entry["probability"])
        assert [i.referenced_sop_instance_uid for i in group.source_images] == [ds.SOPInstanceUID]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == ds.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        ds.SOPInstanceUID
    text = [element.value for element in sr.iterall() if element.keyword == "TextValue"]
    assert "effusion-net" in text and "3" in text and f"sha256={'cd' * 32}" in text  # the algorithm


def test_sr_of_scores_and_a_refused_answer():
    ds = source("CT_small.dcm")
    scores = {"label": "b", "score": 4.5, "top": [{"index": 1, "label": "b", "score": 4.5}]}
    (group,) = groups(dicom_result.report(ds, scores, manifest(CLASSIFIER, labels=["a", "b"], codes=None)))
    (measurement,) = group.get_measurements()
    assert measurement.name.meaning == "Model score" and measurement.value == 4.5
    assert group.finding_type.meaning == "b"
    with pytest.raises(InferenceError, match="top"):
        dicom_result.report(ds, {"label": "b"}, manifest(CLASSIFIER))


# ------------------------------------------------------------------ answers of the real function

def test_encode_turns_real_answers_into_seg_and_sr():
    phantom = (SAMPLES / "phantom.dcm").read_bytes()
    service = Service(Settings(model_uri=str(MODELS / "lesion-unet"), baked_bundle="", threads=1))
    answer = service.predict(phantom, "application/dicom").body
    m = manifests.parse(json.loads((MODELS / "lesion-unet" / "manifest.json").read_text()))
    ds = pydicom.dcmread(io.BytesIO(phantom))
    encoded = dicom_result.encode(ds, answer, m)
    assert encoded.suffix == ".seg.dcm" and encoded.media_type == "application/dicom"
    mask = dicom_result._png(answer["result"]["mask"]["data"])
    lesion = next(c for c in answer["result"]["classes"] if c["label"] == "lesion")
    assert lesion["pixels"] > 0  # the phantom has a lesion: the comparison below is not of empty masks
    seg = read_seg(encoded.data)
    assert np.array_equal(segment_pixels(seg, ds, lesion["index"]), (mask == lesion["index"]).astype(np.uint8))

    ct = pydicom_file("CT_small.dcm").read_bytes()
    service = Service(Settings(model_uri=str(MODELS / "digits-cnn"), baked_bundle="", threads=1))
    answer = service.predict(ct, "application/dicom").body
    m = manifests.parse(json.loads((MODELS / "digits-cnn" / "manifest.json").read_text()))
    encoded = dicom_result.encode(pydicom.dcmread(io.BytesIO(ct)), answer, m)
    assert encoded.suffix == ".sr.dcm"
    best = groups(encoded.data)[0]
    assert best.finding_type.meaning == answer["result"]["label"]
    assert best.get_measurements()[0].value == pytest.approx(answer["result"]["probability"])

    with pytest.raises(NotAcceptable) as info:
        dicom_result.encode(ds, {"task": "tensor", "result": {}}, m)
    assert (info.value.status, info.value.code) == (406, "not_acceptable")


def test_highdicom_is_imported_only_when_a_dicom_result_is_made():
    script = """
import io, sys
from onnxfn.service import Service
from onnxfn.settings import Settings
from onnxfn.codecs import dicom_result
service = Service(Settings(model_uri=sys.argv[1], baked_bundle="", threads=1))
answer = service.predict(open(sys.argv[2], "rb").read(), "application/dicom")
assert answer.body["task"] == "segmentation"
print("highdicom" in sys.modules)
import pydicom
dicom_result.encode(pydicom.dcmread(sys.argv[2]), answer.body, service.model(None)[0].manifest)
print("highdicom" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script, str(MODELS / "lesion-unet"), str(SAMPLES / "phantom.dcm")],
                          capture_output=True, text=True, cwd=MODELS.parent, env={**os.environ, "PYTHONPATH": "shared"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"]
