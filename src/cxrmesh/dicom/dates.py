"""Dates and ages under the profile's options: dates shifted by the patient's keyed offset
(Modified Dates), ages kept but capped at 90 years (Patient Characteristics, HIPAA Safe Harbor)."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from typing import Final

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

AGE_CAP_YEARS: Final[int] = 90  # HIPAA Safe Harbor: ages over 89 are aggregated as "90 or older"


def shift_da(value: str, offset: timedelta) -> str:
    """Shift a DA value ("YYYYMMDD", also the old "YYYY.MM.DD"); '' if it is not a full date."""
    v = value.strip().replace(".", "")
    try:
        return (datetime.strptime(v, "%Y%m%d") + offset).strftime("%Y%m%d")
    except ValueError:
        return ""


def shift_dt(value: str, offset: timedelta) -> str:
    """Shift the date part of a DT value and drop its UTC offset (which hints at location)."""
    v = value.strip()
    for sign in "+-":
        cut = v.find(sign, 4)
        if cut >= 0:
            v = v[:cut]
    if len(v) < 8:
        return ""
    day = shift_da(v[:8], offset)
    return day + v[8:] if day else ""


def map_values(elem: DataElement, fn) -> None:
    """Apply fn to each value of a possibly multi-valued string element; drop emptied values."""
    if elem.value is None or elem.value == "":
        return
    if isinstance(elem.value, (MultiValue, list, tuple)):
        out = [fn(str(v)) for v in elem.value]
        out = [v for v in out if v]
        elem.value = out if out else ""
    else:
        elem.value = fn(str(elem.value))


def age_years(value: str) -> float | None:
    v = str(value).strip().upper()
    if len(v) != 4 or not v[:3].isdigit() or v[3] not in "DWMY":
        return None
    per_year = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[v[3]]
    return int(v[:3]) / per_year


def age_string(years: float) -> str:
    if years >= AGE_CAP_YEARS:
        return f"{AGE_CAP_YEARS:03d}Y"
    if years >= 2:
        return f"{math.floor(years):03d}Y"
    return f"{min(math.floor(years * 12), 999):03d}M"


def age_band(years: float | None) -> str:
    if years is None or years < 0:
        return ""
    if years >= AGE_CAP_YEARS:
        return f"{AGE_CAP_YEARS}+"
    lo = int(years // 10) * 10
    return f"{lo}-{lo + 9}"


def parse_da(value: object) -> date | None:
    try:
        return datetime.strptime(str(value).strip().replace(".", ""), "%Y%m%d").date()
    except ValueError:
        return None


def source_age(ds: Dataset) -> float | None:
    """Age in years from PatientAge, else from birth date and study (or content) date."""
    years = age_years(ds.get("PatientAge", "") or "")
    if years is not None:
        return years
    born = parse_da(ds.get("PatientBirthDate", ""))
    seen = next(
        (
            d
            for k in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
            if (d := parse_da(ds.get(k, "")))
        ),
        None,
    )
    if born is None or seen is None or seen < born:
        return None
    return (seen - born).days / 365.25
