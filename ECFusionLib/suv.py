"""Body-weight SUV for PET series from their DICOM tags.

    SUVbw = C * W / D(t)    C: activity concentration (Bq/ml, Units BQML), W: PatientWeight in g,
                            D(t): injected dose (Bq) decayed from the injection time to the time the
                            image is decay-corrected to (SeriesTime for DecayCorrection START).

The sequence tags (RadiopharmaceuticalInformationSequence) are read with pydicom: GDCM's metadata in
SimpleITK does not include sequences.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

from .errors import ECFusionError

PET_UNITS = ("native", "suv")
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def tag_number(value, tag: str, unit: str, what: str) -> float:
    """A positive number from a DICOM decimal string, accepting the ``unit`` written after it ("70kg", "70 KG"):
    scanners and hand-edited archives do that. ECFusionError naming the tag and its value otherwise."""
    match = _NUMBER.match(str(value))
    if match and match.group(2).lower() in ("", unit.lower()) and float(match.group(1)) > 0:
        return float(match.group(1))
    raise ECFusionError(f"{what}: {tag} is '{value}', not a number > 0 in {unit}. Correct the tag, or use "
                        "--pet-units native (the default) and give --window/--level in the image's own units")


def _when(date: str, time: str) -> datetime | None:
    time = (time or "").split(".")[0].strip()
    if len(time) < 4:
        return None
    time = time.ljust(6, "0")[:6]
    try:
        return datetime.strptime(((date or "").strip() or "19000101") + time, "%Y%m%d%H%M%S")
    except ValueError:
        return None


def suv_factor(dicom_file: str) -> dict:
    """The factor that turns this PET series' values into body-weight SUV, with what it was computed from.

    Returns {"units": "SUVbw", "factor": g/Bq, "patient_weight_kg", "injected_dose_Bq", "half_life_s",
    "injection_time", "reference_time", "decay_correction", "elapsed_s", "source_units"}. ECFusionError
    naming the missing or unusable tags otherwise.
    """
    import pydicom

    ds = pydicom.dcmread(dicom_file, stop_before_pixels=True)
    what = f"cannot compute SUV for {dicom_file}"
    if ds.get("Modality", "") != "PT":
        raise ECFusionError(f"{what}: its Modality is {ds.get('Modality', 'missing')}, not PT; --pet-units suv is for PET")
    units = str(ds.get("Units", "")).upper()
    missing = [name for name, ok in (
        ("PatientWeight (0010,1030)", ds.get("PatientWeight")),
        ("RadiopharmaceuticalInformationSequence (0054,0016)", ds.get("RadiopharmaceuticalInformationSequence")),
        ("Units (0054,1001)", units)) if not ok]
    if missing:
        raise ECFusionError(f"{what}: missing {', '.join(missing)}. Use --pet-units native (the default) and give "
                            "--window/--level in the image's own units")
    weight_kg = tag_number(ds.get("PatientWeight"), "PatientWeight (0010,1030)", "kg", what)
    base = {"patient_weight_kg": weight_kg, "source_units": units}
    if units == "GML":  # the scanner already stored SUVbw
        return {"units": "SUVbw", "factor": 1.0, **base, "note": "values already in g/ml (SUVbw)"}
    if units != "BQML":
        raise ECFusionError(f"{what}: Units (0054,1001) is {units}; body-weight SUV needs BQML (Bq/ml)")
    item = ds.RadiopharmaceuticalInformationSequence[0]
    dose, half_life = item.get("RadionuclideTotalDose"), item.get("RadionuclideHalfLife")
    injected = None
    if item.get("RadiopharmaceuticalStartDateTime"):
        text = str(item.RadiopharmaceuticalStartDateTime)
        injected = _when(text[:8], text[8:])
    elif item.get("RadiopharmaceuticalStartTime"):
        injected = _when(ds.get("SeriesDate", ""), str(item.RadiopharmaceuticalStartTime))
    correction = str(ds.get("DecayCorrection", "")).upper()
    reference = _when(ds.get("SeriesDate", ""), ds.get("SeriesTime", ""))
    missing = [name for name, ok in (("RadionuclideTotalDose (0018,1074)", dose),
                                     ("RadionuclideHalfLife (0018,1075)", half_life),
                                     ("RadiopharmaceuticalStart(Date)Time (0018,1072/1078)", injected),
                                     ("DecayCorrection (0054,1102)", correction),
                                     ("SeriesTime (0008,0031)", reference)) if not ok]
    if missing:
        raise ECFusionError(f"{what}: missing {', '.join(missing)}. Use --pet-units native (the default) and give "
                            "--window/--level in the image's own units")
    if correction == "ADMIN":
        elapsed = 0.0
    elif correction == "START":
        elapsed = (reference - injected).total_seconds()
        dated = bool(item.get("RadiopharmaceuticalStartDateTime")) and bool(ds.get("SeriesDate"))
        if elapsed < 0 and not dated:  # an injection time without its date, the day before the scan
            elapsed += timedelta(days=1).total_seconds()
        if elapsed < 0:
            raise ECFusionError(f"{what}: the series starts before the injection ({reference} < {injected})")
    else:
        raise ECFusionError(f"{what}: DecayCorrection (0054,1102) is {correction or 'missing'}; only START and "
                            "ADMIN are supported")
    dose = tag_number(dose, "RadionuclideTotalDose (0018,1074)", "Bq", what)
    half_life = tag_number(half_life, "RadionuclideHalfLife (0018,1075)", "s", what)
    decayed = dose * math.exp(-math.log(2) * elapsed / half_life)
    return {"units": "SUVbw", "factor": weight_kg * 1000.0 / decayed, **base, "injected_dose_Bq": dose,
            "half_life_s": half_life, "injection_time": injected.isoformat(),
            "reference_time": reference.isoformat(), "decay_correction": correction, "elapsed_s": elapsed}
