"""DICOM SEG + TID 1500 SR outputs: written to bytes, read back with pydicom and highdicom."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxrmesh.analysis.pixels import Letterbox, letterbox_labels
from cxrmesh.analysis.quantify import region_table
from cxrmesh.analysis.regions import REGION_KEYS, Region, split_regions
from cxrmesh.contracts.preprocessing import TRAINING_COPY_MAX
from cxrmesh.dicom import outputs as do

VERSION = "1.4.2"
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientIdentityRemoved",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyDescription",
)
# What a minimal PS3.15 pass removes (the project's own de-identifier is exercised separately).
_REMOVE = [
    "OtherPatientIDsSequence",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "PerformingPhysicianName",
    "OperatorsName",
    "ImageComments",
    "InstanceCreatorUID",
]
_EMPTY = ["PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName"]


def _deidentify(raw: Dataset) -> Dataset:
    """A small stand-in for the ingest de-identification: pseudonym, empty/removed identifiers."""
    ds = Dataset()
    for elem in raw:
        if elem.keyword not in _REMOVE:
            ds.add(copy.deepcopy(elem))  # setattr below would otherwise edit the raw's elements
    for kw in _EMPTY:
        setattr(ds, kw, None)
    ds.PatientName = "PSEUDO^" + str(raw.PatientID)[-4:]
    ds.PatientID = "PSEUDO" + str(raw.PatientID)[-4:]
    ds.PatientIdentityRemoved = "YES"
    ds.file_meta = raw.file_meta
    return ds


def _read(b: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(b))


def _masks(seg: hd.seg.Segmentation, source_uid: str) -> np.ndarray:
    """(rows, cols, 4) boolean stack for segments 1..4 as highdicom decodes it."""
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_uid], segment_numbers=[1, 2, 3, 4], combine_segments=False
    )
    return px[0].astype(bool)


def _check_references_source(seg_ds: Dataset, source: Dataset) -> None:
    (series,) = seg_ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    (inst,) = series.ReferencedInstanceSequence
    assert inst.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert inst.ReferencedSOPClassUID == source.SOPClassUID
    for frame in seg_ds.PerFrameFunctionalGroupsSequence:
        (src_item,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert src_item.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert src_item.SpatialLocationsPreserved == "YES"


def _check_patient_study(out: Dataset, source: Dataset) -> None:
    """Patient/study attributes equal the source's; none is added that the source lacks (non-empty)."""
    for kw in PATIENT_STUDY_KEYWORDS:
        if kw in source and source.get(kw):
            assert out.get(kw) == source.get(kw), kw
        else:
            assert not out.get(kw), kw
    for kw in _REMOVE:
        if kw != "DeviceSerialNumber":  # the SEG/SR's own equipment module carries cxrmesh's
            assert kw not in out, kw
    assert out.DeviceSerialNumber == "cxrmesh"


def _check_no_raw_identifiers(b: bytes, raw: Dataset) -> None:
    """None of the raw file's identifying values (removed by the de-identification) is in the bytes."""
    keywords = (*_REMOVE, *_EMPTY, "PatientName", "PatientID")
    values = {str(raw[kw].value) for kw in keywords if kw in raw and raw[kw].VR != "SQ"}
    values = {v for v in values if len(v) >= 3}
    assert values
    leaked = sorted(v for v in values if v.encode() in b)
    assert not leaked, leaked


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def synthetic(manifest: list[dict], corpus: Path) -> dict:
    """A DX study with RALE > 0 and a letterbox offset, de-identified, with truth and measurements."""
    row = next(
        r for r in manifest if r["modality"] == "DX" and r["rale_total"] > 0 and r["rows"] != r["cols"]
    )
    raw = pydicom.dcmread(corpus / row["paths"]["dicom"], stop_before_pixels=True)
    source = _deidentify(raw)
    regions_model = np.asarray(Image.open(corpus / row["paths"]["regions"]))
    lungs = np.asarray(Image.open(corpus / row["paths"]["lungs"]))
    image = np.asarray(Image.open(corpus / row["paths"]["image"]), dtype=np.float64) / TRAINING_COPY_MAX
    hilum = tuple(row["landmarks"]["left_hilum"]["model"])
    table = region_table(image, lungs, hilum)
    lb = Letterbox(row["rows"], row["cols"], regions_model.shape[0])
    regions_source = do.regions_to_source(regions_model, lb)
    seg = do.make_segmentation(source, regions_source, software_version=VERSION)
    seg_bytes = do.to_bytes(seg)
    sr = do.make_measurement_report(
        source, seg, table, row["rale"], row["rale_total"], software_version=VERSION
    )
    return {
        "row": row,
        "raw": raw,
        "source": source,
        "regions_model": regions_model,
        "regions_source": regions_source,
        "letterbox": lb,
        "table": table,
        "seg": seg,
        "seg_bytes": seg_bytes,
        "sr_bytes": do.to_bytes(sr),
    }


def _simple_regions(rows: int, cols: int, size: int = 512) -> np.ndarray:
    """A model-frame map: two elliptical lungs split at a hilum line, letterboxed like a real one."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    lungs = np.zeros((rows, cols), np.uint8)
    for cx, label in ((0.3 * cols, 1), (0.7 * cols, 2)):
        inside = ((xx - cx) / (0.16 * cols)) ** 2 + ((yy - 0.5 * rows) / (0.33 * rows)) ** 2 <= 1
        lungs[inside] = label
    regions = split_regions(lungs, (0.6 * cols, 0.45 * rows))
    return letterbox_labels(regions, size)


@pytest.fixture(scope="module")
def rg1() -> dict:
    """The real CR MONOCHROME1 radiograph (Pixel Spacing 0\\0, no Imager Pixel Spacing)."""
    raw = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    source = _deidentify(raw)
    regions_model = _simple_regions(int(raw.Rows), int(raw.Columns))
    regions_source = do.regions_to_source(regions_model, Letterbox(int(raw.Rows), int(raw.Columns)))
    return {"source": source, "regions_model": regions_model, "regions_source": regions_source}


# ---------------------------------------------------------------------------------------------
# geometry


def test_regions_to_source_inverts_the_letterbox(synthetic: dict) -> None:
    row, lb = synthetic["row"], synthetic["letterbox"]
    assert (lb.scale, list(lb.offset)) == (
        pytest.approx(row["letterbox"]["scale"]),
        row["letterbox"]["offset_rc"],
    )
    model, src = synthetic["regions_model"], synthetic["regions_source"]
    assert src.shape == (row["rows"], row["cols"]) and src.dtype == np.uint8
    # letterboxing the source-frame map again gives back the model map exactly
    assert np.array_equal(letterbox_labels(src, model.shape[0]), model)
    # each source pixel carries the label of the model pixel nearest to its centre (Letterbox.to_model)
    rng = np.random.default_rng(0)
    ij = np.stack([rng.integers(0, row["rows"], 2000), rng.integers(0, row["cols"], 2000)], axis=1)
    xy_model = lb.to_model(ij[:, ::-1].astype(np.float64))
    mr = np.clip(np.floor(xy_model[:, 1] + 0.5).astype(int), 0, model.shape[0] - 1)
    mc = np.clip(np.floor(xy_model[:, 0] + 0.5).astype(int), 0, model.shape[1] - 1)
    assert np.array_equal(src[ij[:, 0], ij[:, 1]], model[mr, mc])
    assert set(np.unique(src)) == {0, 1, 2, 3, 4}


def test_regions_to_source_any_model_size(synthetic: dict) -> None:
    src, lb = synthetic["regions_source"], synthetic["letterbox"]
    small = letterbox_labels(src, 256)
    back = do.regions_to_source(small, lb)  # lb was made for 512: the map's own size wins
    assert back.shape == src.shape
    assert np.array_equal(letterbox_labels(back, 256), small)
    assert np.mean(back != src) < 0.01
    with pytest.raises(ValueError, match="square"):
        do.regions_to_source(np.zeros((10, 12), np.uint8), lb)
    with pytest.raises(ValueError, match="labels"):
        do.regions_to_source(np.full((8, 8), 5, np.uint8), lb)


# ---------------------------------------------------------------------------------------------
# SEG


def _check_seg(
    seg_bytes: bytes, source: Dataset, regions_source: np.ndarray, series_number: int = 900
) -> hd.seg.Segmentation:
    ds = _read(seg_bytes)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert int(ds.NumberOfFrames) == 4 and (ds.Rows, ds.Columns) == (source.Rows, source.Columns)
    # pydicom's own decoder agrees with the masks, frame k == segment k
    frames = ds.pixel_array.astype(bool)
    for k in range(4):
        assert (
            int(
                ds.PerFrameFunctionalGroupsSequence[k]
                .SegmentIdentificationSequence[0]
                .ReferencedSegmentNumber
            )
            == k + 1
        )
        assert np.array_equal(frames[k], regions_source == k + 1)
    _check_references_source(ds, source)
    _check_patient_study(ds, source)
    assert (
        ds.SeriesNumber == series_number and ds.SoftwareVersions == VERSION and ds.Manufacturer == "cxrmesh"
    )

    seg = hd.seg.segread(io.BytesIO(seg_bytes))
    assert seg.number_of_segments == 4
    masks = _masks(seg, source.SOPInstanceUID)
    for k in range(4):
        assert np.array_equal(masks[..., k], regions_source == k + 1)
    combined = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], combine_segments=True
    )
    assert np.array_equal(combined[0], regions_source)
    return seg


def test_seg_synthetic_reproduces_truth(synthetic: dict) -> None:
    seg = _check_seg(synthetic["seg_bytes"], synthetic["source"], synthetic["regions_source"])
    _check_no_raw_identifiers(synthetic["seg_bytes"], synthetic["raw"])
    expected = {
        1: ("Right upper lung zone", "281392002", "24028007"),
        2: ("Right lower lung zone", "281394001", "24028007"),
        3: ("Left upper lung zone", "281392002", "7771000"),
        4: ("Left lower lung zone", "281394001", "7771000"),
    }
    for number, (label, zone, side) in expected.items():
        desc = seg.get_segment_description(number)
        assert desc.segment_label == label
        assert desc.segmented_property_category == codes.SCT.AnatomicalStructure
        prop = desc.segmented_property_type
        assert (prop.value, prop.scheme_designator) == (zone, "SCT")
        (modifier,) = prop.SegmentedPropertyTypeModifierCodeSequence
        assert (modifier.CodeValue, modifier.CodingSchemeDesignator) == (side, "SCT")
        assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        (algo,) = desc.algorithm_identification
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("cxrmesh", VERSION)
        assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        key = REGION_KEYS[Region(number)]
        assert desc.tracking_uid == do.tracking_uid(synthetic["source"].SOPInstanceUID, key)


def test_seg_rg1_monochrome1_cr(rg1: dict) -> None:
    source = rg1["source"]
    seg = do.make_segmentation(source, rg1["regions_source"], software_version=VERSION, series_number=77)
    b = do.to_bytes(seg)
    _check_seg(b, source, rg1["regions_source"], series_number=77)
    ds = _read(b)
    # the source's 0\0 Pixel Spacing is not propagated (no Pixel Measures for a frame-of-reference-less CR)
    assert "PixelMeasuresSequence" not in ds.SharedFunctionalGroupsSequence[0]
    # dates come from the (de-identified) source, never from the clock
    assert (ds.ContentDate, ds.ContentTime) == (source.ContentDate, source.ContentTime)
    assert (ds.InstanceCreationDate, ds.SeriesDate) == (source.ContentDate, source.ContentDate)


def test_seg_keeps_empty_zones_as_frames(rg1: dict) -> None:
    regions = rg1["regions_source"].copy()
    regions[regions == Region.LEFT_LOWER] = 0
    b = do.to_bytes(do.make_segmentation(rg1["source"], regions, software_version=VERSION))
    seg = hd.seg.segread(io.BytesIO(b))
    assert seg.number_of_frames == 4
    assert not _masks(seg, rg1["source"].SOPInstanceUID)[..., 3].any()


def test_seg_rejects_bad_maps(rg1: dict) -> None:
    source, regions = rg1["source"], rg1["regions_source"]
    with pytest.raises(ValueError, match="shape"):
        do.make_segmentation(source, regions[:-1], software_version=VERSION)
    bad = regions.copy()
    bad[0, 0] = 7
    with pytest.raises(ValueError, match="labels"):
        do.make_segmentation(source, bad, software_version=VERSION)
    with pytest.raises(ValueError, match="software_version"):
        do.make_segmentation(source, regions, software_version="")


# ---------------------------------------------------------------------------------------------
# SR


def _measurements(group) -> dict[str, tuple[float, str]]:
    return {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}


def test_sr_synthetic_measurements(synthetic: dict) -> None:
    source, seg, table, row = synthetic["source"], synthetic["seg"], synthetic["table"], synthetic["row"]
    ds = _read(synthetic["sr_bytes"])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.Modality == "SR" and ds.SeriesNumber == 901 and ds.CompletionFlag == "COMPLETE"
    _check_patient_study(ds, source)
    _check_no_raw_identifiers(synthetic["sr_bytes"], synthetic["raw"])
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert any(item.CodingSchemeDesignator == "99CXRMESH" for item in ds.CodingSchemeIdentificationSequence)

    sr = hd.sr.srread(io.BytesIO(synthetic["sr_bytes"]))
    evidence = {(uid, cls) for _, _, uid, cls in sr.get_evidence()}
    assert (source.SOPInstanceUID, source.SOPClassUID) in evidence
    assert (seg.SOPInstanceUID, seg.SOPClassUID) in evidence

    (observer,) = sr.content.get_observer_contexts()
    assert observer.observer_type == codes.DCM.Device
    assert observer.observer_identifying_attributes.name == "cxrmesh"

    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 4
    for number, group in enumerate(groups, start=1):
        key = REGION_KEYS[Region(number)]
        assert group.tracking_uid == do.tracking_uid(source.SOPInstanceUID, key)
        ref = group.referenced_segmentation_frame
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert list(ref.referenced_segment_numbers) == [number]
        assert list(ref.referenced_frame_numbers) == [number]
        assert ref.source_image_for_segmentation.referenced_sop_instance_uid == source.SOPInstanceUID
        got = _measurements(group)
        want = table[key]
        assert got["Percent of lung area"] == (pytest.approx(100 * want["area_fraction"], rel=1e-9), "%")
        assert got["Display intensity"] == (pytest.approx(want["mean_intensity"], rel=1e-9), "1")
        assert got["Opacified percent of lung zone"] == (
            pytest.approx(100 * want["opacity_fraction"], rel=1e-9),
            "%",
        )
        q = row["rale"][key]
        assert got["RALE extent score"] == (q["extent"], "1")
        assert got["RALE density score"] == (q["density"], "1")
        assert got["RALE zone score"] == (q["extent"] * q["density"], "1")
        (site,) = group.finding_sites
        assert site.laterality.value == ("24028007" if number <= 2 else "7771000")
    assert sum(table[k]["area_fraction"] for k in REGION_KEYS.values()) == pytest.approx(1.0)

    (summary,) = sr.content.get_image_measurement_groups()
    assert _measurements(summary) == {"RALE total score": (row["rale_total"], "1")}
    assert summary.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID

    # the synthetic DX has Imager Pixel Spacing + Patient Orientation: the Image Library lists the source
    library = [
        item for item in ds.ContentSequence if item.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"
    ]
    assert library and source.SOPInstanceUID in str(library[0])


def test_sr_rg1_without_rale(rg1: dict) -> None:
    source = rg1["source"]
    seg = do.make_segmentation(source, rg1["regions_source"], software_version=VERSION)
    table = {
        key: {"area_fraction": 0.25, "mean_intensity": 0.1 * n, "opacity_fraction": 0.05 * n, "pixels": 9}
        for n, key in enumerate(REGION_KEYS.values())
    }
    b = do.to_bytes(do.make_measurement_report(source, seg, table, None, None, software_version=VERSION))
    sr = hd.sr.srread(io.BytesIO(b))
    _check_patient_study(sr, source)
    assert sr.content.get_image_measurement_groups() == []
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [g.referenced_segmentation_frame.referenced_sop_instance_uid for g in groups] == [
        seg.SOPInstanceUID
    ] * 4
    for n, g in enumerate(groups):
        got = _measurements(g)
        assert set(got) == {"Percent of lung area", "Display intensity", "Opacified percent of lung zone"}
        assert got["Display intensity"][0] == pytest.approx(0.1 * n)
    evidence = {uid for _, _, uid, _ in sr.get_evidence()}
    assert evidence == {source.SOPInstanceUID, seg.SOPInstanceUID}
    assert (sr.ContentDate, sr.InstanceCreationDate) == (source.ContentDate, source.ContentDate)


def test_sr_total_only_and_consistency_checks(synthetic: dict) -> None:
    source, seg, table, row = synthetic["source"], synthetic["seg"], synthetic["table"], synthetic["row"]
    sr = hd.sr.srread(
        io.BytesIO(
            do.to_bytes(do.make_measurement_report(source, seg, table, None, 17, software_version=VERSION))
        )
    )
    (summary,) = sr.content.get_image_measurement_groups()
    assert _measurements(summary) == {"RALE total score": (17, "1")}
    # total derived from the zones when not given
    derived = do.make_measurement_report(source, seg, table, row["rale"], None, software_version=VERSION)
    (summary,) = hd.sr.srread(io.BytesIO(do.to_bytes(derived))).content.get_image_measurement_groups()
    assert _measurements(summary)["RALE total score"][0] == row["rale_total"]

    with pytest.raises(ValueError, match="rale_total"):
        do.make_measurement_report(
            source, seg, table, row["rale"], row["rale_total"] + 1, software_version=VERSION
        )
    with pytest.raises(ValueError, match=r"0\.\.48"):
        do.make_measurement_report(source, seg, table, None, 49, software_version=VERSION)
    bad_rale = {k: dict(v) for k, v in row["rale"].items()}
    bad_rale["left_lower"]["score"] = 99
    with pytest.raises(ValueError, match="extent x density"):
        do.make_measurement_report(source, seg, table, bad_rale, None, software_version=VERSION)
    with pytest.raises(ValueError, match="lacks region"):
        do.make_measurement_report(
            source,
            seg,
            {k: v for k, v in table.items() if k != "right_upper"},
            None,
            None,
            software_version=VERSION,
        )
    nan_table = {k: dict(v) for k, v in table.items()}
    nan_table["left_upper"]["mean_intensity"] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        do.make_measurement_report(source, seg, nan_table, None, None, software_version=VERSION)


def test_sr_rejects_segmentation_of_another_image(synthetic: dict, rg1: dict) -> None:
    seg_rg1 = do.make_segmentation(rg1["source"], rg1["regions_source"], software_version=VERSION)
    with pytest.raises(ValueError, match=r"different studies|not derived"):
        do.make_measurement_report(
            synthetic["source"], seg_rg1, synthetic["table"], None, None, software_version=VERSION
        )


# ---------------------------------------------------------------------------------------------
# identity and idempotence


def test_same_inputs_same_uids_and_bytes(synthetic: dict) -> None:
    source, regions, table, row = (synthetic[k] for k in ("source", "regions_source", "table", "row"))
    seg2 = do.make_segmentation(source, regions.copy(), software_version=VERSION)
    seg2_bytes = do.to_bytes(seg2)
    assert seg2_bytes == synthetic["seg_bytes"]  # no clock anywhere: re-processing is byte-identical
    sr2 = do.make_measurement_report(
        source, seg2, table, row["rale"], row["rale_total"], software_version=VERSION
    )
    assert do.to_bytes(sr2) == synthetic["sr_bytes"]

    first_seg, first_sr = _read(synthetic["seg_bytes"]), _read(synthetic["sr_bytes"])
    for ds in (first_seg, first_sr):
        assert ds.SOPInstanceUID.startswith("2.25.") and ds.SOPInstanceUID.is_valid
        assert ds.SeriesInstanceUID.startswith("2.25.") and len(ds.SOPInstanceUID) <= 64
    assert first_seg.SeriesInstanceUID != first_sr.SeriesInstanceUID

    # different content -> new instance in the same series; different version -> new series
    changed = regions.copy()
    changed[changed.shape[0] // 2, changed.shape[1] // 2] ^= 1
    seg3 = do.make_segmentation(source, changed, software_version=VERSION)
    assert seg3.SOPInstanceUID != first_seg.SOPInstanceUID
    assert seg3.SeriesInstanceUID == first_seg.SeriesInstanceUID
    seg4 = do.make_segmentation(source, regions, software_version=VERSION + "+1")
    assert seg4.SeriesInstanceUID != first_seg.SeriesInstanceUID
    table2 = {k: dict(v) for k, v in table.items()}
    table2["right_upper"]["mean_intensity"] += 1e-6
    sr3 = do.make_measurement_report(
        source, seg2, table2, row["rale"], row["rale_total"], software_version=VERSION
    )
    assert sr3.SOPInstanceUID != first_sr.SOPInstanceUID
    assert sr3.SeriesInstanceUID == first_sr.SeriesInstanceUID


def test_no_phi_from_the_raw_file_with_project_deidentification(manifest: list[dict], corpus: Path) -> None:
    deid = pytest.importorskip("cxrmesh.dicom.deid")
    phi_module = pytest.importorskip("cxrmesh.dicom.phi")
    row = next(r for r in manifest if r["modality"] == "CR")
    raw = pydicom.dcmread(corpus / row["paths"]["dicom"], stop_before_pixels=True)
    source = deid.deidentify(raw, b"test-secret-0123456789").dataset
    regions_model = np.asarray(Image.open(corpus / row["paths"]["regions"]))
    regions = do.regions_to_source(regions_model, Letterbox(row["rows"], row["cols"]))
    seg = do.make_segmentation(source, regions, software_version=VERSION)
    table = {
        k: {"area_fraction": 0.25, "mean_intensity": 0.5, "opacity_fraction": 0.0}
        for k in REGION_KEYS.values()
    }
    sr = do.make_measurement_report(
        source, seg, table, row["rale"], row["rale_total"], software_version=VERSION
    )
    phi = phi_module.phi_strings(raw)
    assert phi  # the synthetic file does carry fake PHI
    for b in (do.to_bytes(seg), do.to_bytes(sr)):
        leaked = sorted(p for p in phi if p.encode() in b)
        assert not leaked, leaked
        out = _read(b)
        assert out.PatientID == source.PatientID and out.StudyInstanceUID == source.StudyInstanceUID
        assert out.PatientIdentityRemoved == "YES"
