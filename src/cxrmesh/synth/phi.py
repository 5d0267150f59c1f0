"""Realistic but fake patient and study identifiers for the synthetic corpus.

Every synthetic radiograph carries PHI-shaped values (names, MRNs, birth dates, addresses, ...)
so that the de-identification stage can be tested against something that looks like the real
thing. Values are deterministic functions of a seed so the corpus is reproducible, and are
shaped to fit their DICOM value representations (PN, LO <= 64, SH <= 16) so the writer never has
to truncate them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache

from faker import Faker

# Site-style medical record number formats: (prefix, number of digits).
# Unknown sites fall back to _DEFAULT_MRN so a newly added site still gets PHI.
_MRN_FORMATS: dict[str, tuple[str, int]] = {
    "site-a": ("NGH", 7),
    "site-b": ("", 8),
    "site-c": ("SA-", 6),
}
_DEFAULT_MRN = ("P", 8)
# Short site codes used in accession numbers and station names.
_SITE_CODES: dict[str, str] = {"site-a": "NGH", "site-b": "RUMC", "site-c": "SACH"}

_LO_MAX = 64  # DICOM LO maximum length (Patient's Address, Device Serial Number, Other Patient IDs)
_SH_MAX = 16  # DICOM SH maximum length (Accession Number, Study ID, Station Name, telephone)

_faker: Faker | None = None


def _fake(seed: int, domain: str) -> Faker:
    """The process-wide Faker, reseeded for one draw.

    One instance per process because constructing Faker costs ~30 ms; reseeding is cheap. The
    seed is mixed with a domain tag so a patient and a study drawn with the same seed don't
    share names (the referring physician would otherwise have the patient's family name).
    """
    global _faker
    if _faker is None:
        _faker = Faker("en_US")
    digest = hashlib.sha256(f"cxrmesh-phi:{domain}:{int(seed)}".encode()).digest()
    _faker.seed_instance(int.from_bytes(digest[:8], "big"))
    return _faker


@dataclass(frozen=True)
class PatientPHI:
    """Patient-module PHI of one synthetic patient."""

    patient_name: str  # DICOM PN "Family^Given^Middle"
    patient_id: str  # site-style MRN
    other_patient_ids: str  # enterprise-wide id from another issuer
    birth_date: date
    sex: str  # "M" or "F"
    address: str
    phone: str


@dataclass(frozen=True)
class StudyPHI:
    """Study/series/equipment identifiers that also count as PHI under the de-id profile."""

    accession_number: str
    study_id: str
    referring_physician: str  # PN
    performing_physician: str  # PN
    operator: str  # PN
    station_name: str
    device_serial_number: str


def site_code(site_name: str) -> str:
    """Short code of a site, used in accession numbers, station names and Issuer of Patient ID."""
    return _SITE_CODES.get(site_name, site_name.upper().replace("-", "")[:8])


def _digits(fake: Faker, n: int) -> str:
    return "".join(str(fake.random.randint(0, 9)) for _ in range(n))


def make_mrn(fake: Faker, site_name: str) -> str:
    """An MRN in the site's own format (real sites differ, and de-id must not rely on one)."""
    prefix, n = _MRN_FORMATS.get(site_name, _DEFAULT_MRN)
    first = str(fake.random.randint(1, 9))  # no leading zero: some RIS systems strip them
    return prefix + first + _digits(fake, n - 1)


def _person_name(fake: Faker, sex: str, *, middle: str = "full") -> str:
    """DICOM PN 'Family^Given^Middle'; middle is a full name or an initial."""
    given = fake.first_name_male() if sex == "M" else fake.first_name_female()
    other = fake.first_name_male() if sex == "M" else fake.first_name_female()
    mid = other if middle == "full" else other[0]
    return f"{fake.last_name()}^{given}^{mid}"


def _birth_date(fake: Faker, age_years: int, reference_date: date) -> date:
    """A birth date that makes the patient exactly age_years old on reference_date."""
    latest = _years_before(reference_date, age_years)  # turned age_years on this day at the latest
    earliest = _years_before(reference_date, age_years + 1) + timedelta(days=1)
    span = (latest - earliest).days
    return earliest + timedelta(days=fake.random.randint(0, span))


def _years_before(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year - years)
    except ValueError:  # 29 February in a non-leap target year
        return d.replace(year=d.year - years, day=28)


def _address(fake: Faker) -> str:
    """One-line US address that fits LO (64 chars); drops the apartment/suite if it would not."""
    tail = f", {fake.city()}, {fake.state_abbr(include_territories=False)} {fake.postcode()}"
    street = fake.street_address()
    if len(street) + len(tail) > _LO_MAX:
        street = f"{fake.building_number()} {fake.street_name()}"
    return (street + tail)[:_LO_MAX]


def _phone(fake: Faker) -> str:
    """NANP-shaped number '(AAA) EEE-NNNN' (14 chars, fits SH); Faker's own may add an extension."""
    area = fake.random.randint(201, 989)
    exchange = fake.random.randint(201, 999)
    return f"({area}) {exchange}-{_digits(fake, 4)}"


def make_patient_phi(seed: int, sex: str, age_years: int, reference_date: date, site_name: str) -> PatientPHI:
    """Deterministic fake patient PHI; birth date consistent with age_years at reference_date."""
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    if not 0 <= age_years <= 130:
        raise ValueError(f"age_years must be within 0..130, got {age_years}")
    fake = _fake(seed, "patient")
    name = _person_name(fake, sex)
    mrn = make_mrn(fake, site_name)
    empi = "EMPI" + str(fake.random.randint(1, 9)) + _digits(fake, 9)
    birth = _birth_date(fake, age_years, reference_date)
    return PatientPHI(
        patient_name=name,
        patient_id=mrn,
        other_patient_ids=empi,
        birth_date=birth,
        sex=sex,
        address=_address(fake),
        phone=_phone(fake),
    )


def make_study_phi(seed: int, site_name: str) -> StudyPHI:
    """Deterministic fake study/equipment identifiers in the site's style."""
    fake = _fake(seed, "study")
    code = site_code(site_name)
    accession = (code[:4] + str(fake.random.randint(1, 9)) + _digits(fake, 8))[:_SH_MAX]
    study_id = str(fake.random.randint(1, 9)) + _digits(fake, 5)
    referring = _person_name(fake, fake.random.choice("MF"), middle="initial")
    performing = _person_name(fake, fake.random.choice("MF"), middle="initial")
    operator = _person_name(fake, fake.random.choice("MF"), middle="initial")
    station = f"{code[:4]}-XR{fake.random.randint(1, 12):02d}"[:_SH_MAX]
    serial = fake.bothify("??#######", letters="ABCDEFGHJKLMNPRSTUVWXYZ")
    return StudyPHI(
        accession_number=accession,
        study_id=study_id,
        referring_physician=referring,
        performing_physician=performing,
        operator=operator,
        station_name=station,
        device_serial_number=serial,
    )


@cache
def institution_address(site_name: str) -> str:
    """A fixed fake street address for a site (an institution does not move between studies)."""
    seed = int.from_bytes(hashlib.sha256(site_name.encode()).digest()[:8], "big")
    return _address(_fake(seed, "institution"))
