"""Multi-frame inputs and 3-D models: an enhanced CT built with pydicom (per-frame rescale, window and
position), tiny NCDHW/NDHWC ONNX models whose answers the tests compute with numpy, and their bundles."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from tests.support.images import pydicom_file
from tests.support.models import linear_classifier, linear_weights, onnx_model


def group(**sequences):
    """One item of a functional groups sequence: each keyword argument a macro sequence of one item holding
    the given attributes (PlaneOrientationSequence={"ImageOrientationPatient": [...]})."""
    import pydicom
    item = pydicom.Dataset()
    for name, values in sequences.items():
        macro = pydicom.Dataset()
        for keyword, value in values.items():
            setattr(macro, keyword, value)
        setattr(item, name, [macro])
    return item


def enhanced_ct(positions: list[float], size: int = 16, seed: int = 0) -> tuple[bytes, np.ndarray, list]:
    """An enhanced multi-frame CT (CT_small's header) of len(positions) `size`x`size` frames: per-frame rescale
    (slope 1 + i, intercept -1000 - 10 i) and axial positions z = positions[i] in the Per-frame Functional
    Groups, orientation, spacing and a window in the Shared ones. The file, the stored frames and each frame's
    rescale."""
    import pydicom
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    frames = len(positions)
    stored = np.random.default_rng(seed).integers(0, 2000, size=(frames, size, size)).astype(np.int16)
    ds.Rows = ds.Columns = size
    ds.PixelData, ds.NumberOfFrames = stored.tobytes(), frames

    ds.SharedFunctionalGroupsSequence = [group(
        PlaneOrientationSequence={"ImageOrientationPatient": [1, 0, 0, 0, 1, 0]},  # axial: normal = +z
        PixelMeasuresSequence={"PixelSpacing": [0.5, 0.75], "SliceThickness": 2},
        FrameVOILUTSequence={"WindowCenter": 0, "WindowWidth": 2000})]
    rescales = [(1.0 + i, -1000.0 - 10 * i) for i in range(frames)]
    ds.PerFrameFunctionalGroupsSequence = [group(
        PixelValueTransformationSequence={"RescaleSlope": rescales[i][0], "RescaleIntercept": rescales[i][1]},
        PlanePositionSequence={"ImagePositionPatient": [0.0, 0.0, positions[i]]}) for i in range(frames)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer)
    return buffer.getvalue(), stored, rescales


def depth_shifter(path: Path, layout: str = "NCDHW") -> Path:
    """A 3-D segmenter whose answer depends on the slice order: logits[d] = image[d + 1] - 0.5 (a Conv3d with a
    (3, 1, 1) kernel [0, 0, 1] and bias -0.5; the last slice sees zeros), one channel, NCDHW."""
    assert layout == "NCDHW"

    def graph(helper, T, nh):
        weights = np.zeros((1, 1, 3, 1, 1), dtype=np.float32)
        weights[0, 0, 2] = 1.0
        return helper.make_graph(
            [helper.make_node("Conv", ["image", "W", "B"], ["logits"], kernel_shape=[3, 1, 1],
                              pads=[1, 0, 0, 1, 0, 0])], "shift",
            [helper.make_tensor_value_info("image", T.FLOAT, [1, 1, "D", "H", "W"])],
            [helper.make_tensor_value_info("logits", T.FLOAT, [1, 1, "D", "H", "W"])],
            [nh.from_array(weights, "W"), nh.from_array(np.array([-0.5], dtype=np.float32), "B")])
    return onnx_model(path, graph)


def volume_classifier(path: Path, shape=(1, 4, 16, 16, 1), classes: int = 3, seed: int = 0) -> tuple[Path, np.ndarray]:
    """image (NDHWC, fixed) -> Flatten -> MatMul: a 3-D classifier the tests compute with numpy; the weights."""
    return linear_classifier(path, shape, classes, seed), linear_weights(shape, classes, seed)


def volume_bundles(root: Path) -> dict[str, Path]:
    """`shifter` (depth_shifter: segmentation, sigmoid threshold, window scaling from the file) and `volume-cls`
    (volume_classifier over 4 frames of 16x16, minmax scaling, softmax), packaged with `onnxfn package`."""
    from onnxfn.tools.package import Options, build
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    out["shifter"] = build(depth_shifter(root / "shifter.onnx"), root / "shifter",
                           Options(name="shifter", task="segmentation", layout="NCDHW", activation="sigmoid",
                                   decision="threshold", labels=["dense"],
                                   image={"frames": "volume", "scaling": "window", "window_source": "file"})).root
    model, _ = volume_classifier(root / "volume-cls.onnx")
    out["volume-cls"] = build(model, root / "volume-cls",
                              Options(name="volume-cls", task="classification", layout="NDHWC",
                                      activation="softmax", labels=["a", "b", "c"],
                                      image={"frames": "volume", "scaling": "minmax"})).root
    return out
