"""No patient data in logs: every DICOM file of pydicom's corpus goes through the function under the real fdk
(a grey model and a colour-tolerant segmenter, JSON and DICOM answers alike, good files and damaged ones) and
the function's log is searched for every patient, study, series and instance value those files hold."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.support.calls import gateway
from tests.support.images import pydicom_file
from tests.support.models import MODELS

CORPUS = Path(pydicom_file("CT_small.dcm")).parent
#: what identifies a patient, a study or an instance (values shorter than 4 characters are too common to
#: search for: "M", "0", "1")
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "PatientAddress",
               "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
               "AccessionNumber", "StudyID", "StudyDescription", "InstitutionName", "ReferringPhysicianName",
               "PerformingPhysicianName", "OperatorsName")


def values(path: Path) -> set[str]:
    """The identifying values of one file, as text."""
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        found = set()
        for keyword in IDENTIFYING:
            value = ds.get(keyword)
            items = value if isinstance(value, pydicom.multival.MultiValue) else [value]
            found.update(text for item in items if item is not None and len(text := str(item).strip()) >= 4
                         and any(c.isalnum() for c in text)  # "^^^^" (an empty name) is in any traceback
                         and not (text.isdigit() and len(text) < 8))  # "4900" is also a byte count or a time
        return found
    except Exception:  # a file pydicom cannot read holds nothing it could show either
        return set()


@pytest.mark.parametrize("model", ["digits-cnn", "lesion-unet"])
def test_the_log_holds_no_identifying_value_of_any_corpus_file(function, model):
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ""))
    assert len(files) > 100
    fn = function({"MODEL_URI": str(MODELS / model), "ONNXFN_LOG_LEVEL": "DEBUG"})
    secrets, statuses = set(), set()
    for i, path in enumerate(files):
        data = path.read_bytes()
        if len(data) > 6 * 1024 * 1024:
            continue
        secrets |= values(path)
        accept = {"Accept": "application/dicom"} if i % 2 else {}
        if i % 3:
            reply = gateway(fn, "POST", "/predict", data, "application/dicom", **accept)
        else:
            reply = fn.call(data, "application/dicom", headers=accept)
        statuses.add(reply.http_status)
        assert reply.http_status < 500 or reply.http_status == 503, (path.name, reply.body[:300])
    assert fn.alive and 200 in statuses and len(secrets) > 50
    log = fn.logs()
    leaked = sorted(s for s in secrets if s in log)
    assert not leaked, f"{len(leaked)} identifying values in the log, e.g. {leaked[:3]}"
