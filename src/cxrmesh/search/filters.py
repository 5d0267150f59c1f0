"""Milvus filter expressions built from typed, allow-listed values, and the value checks behind them.

Every value is checked against the schema's allow-list or pattern before it is used, and every string
literal is escaped as well, so a value can never change the expression's structure
(``"M\\" or 1==1"`` is refused). pymilvus' own ``get()`` pastes primary keys into an expression
unescaped, which is why the store builds its key lists with :func:`in_list`. Messages name the field
and the rule, never the value (it may be a key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date

from cxrmesh.contracts.labels import DIAGNOSES
from cxrmesh.search.errors import InvalidQuery
from cxrmesh.search.records import CaseFilter

SEXES = ("M", "F", "O")
OUTCOMES = (-1, 0, 1)
MAX_EXCLUDED = 1024

KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
SITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")
AGE_BAND_RE = re.compile(r"[0-9]{1,3}(-[0-9]{1,3}|\+)")
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_str(value: object, what: str, *, pattern: re.Pattern[str] | None = None, allowed=()) -> str:
    """A validated string; the message names the field and the rule, never the value (it may be a key)."""
    if not isinstance(value, str):
        raise InvalidQuery(f"{what} must be a string, got {type(value).__name__}")
    if allowed and value not in allowed:
        raise InvalidQuery(f"{what} must be one of {', '.join(allowed)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidQuery(f"{what} must match {pattern.pattern}")
    return value


def check_key(value: object, what: str) -> str:
    return check_str(value, what, pattern=KEY_RE)


def check_date(value: object, what: str) -> str:
    text = check_str(value, what, pattern=DATE_RE)
    try:
        date.fromisoformat(text)
    except ValueError:
        raise InvalidQuery(f"{what} is not a calendar date (YYYY-MM-DD)") from None
    return text


def study_day(study_date: str) -> int:
    """yyyymmdd as an int (0 unknown): date ranges become integer comparisons on every Milvus version."""
    return int(study_date.replace("-", "")) if study_date else 0


def quote(value: str) -> str:
    """A Milvus string literal. Values are allow-listed before this; escaping is the second fence."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def str_list(values: object, what: str, check: Callable[[object, str], str]) -> list[str]:
    """Checked, de-duplicated strings of a tuple (order kept); a bare string is refused."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        # A bare string would iterate as characters and silently filter on each letter.
        raise InvalidQuery(f"{what} must be a tuple of strings, not {type(values).__name__}")
    out: list[str] = []
    for v in values:
        v = check(v, f"{what} entry")
        if v not in out:
            out.append(v)
    return out


def in_list(field_name: str, values: Sequence[str], *, negate: bool = False) -> str:
    op = "not in" if negate else "in"
    return f"{field_name} {op} [{', '.join(quote(v) for v in values)}]"


def filter_expression(flt: CaseFilter) -> str:
    """The Milvus boolean expression for a filter ("" when it does not restrict); InvalidQuery if a value
    is not one the schema can hold, which also refuses anything that would alter the expression."""
    if not isinstance(flt, CaseFilter):
        raise InvalidQuery(f"filter must be a CaseFilter, got {type(flt).__name__}")
    parts: list[str] = []
    if sites := str_list(flt.sites, "filter.sites", lambda v, w: check_str(v, w, pattern=SITE_RE)):
        parts.append(in_list("site", sites))
    if diagnoses := str_list(
        flt.diagnoses, "filter.diagnoses", lambda v, w: check_str(v, w, allowed=DIAGNOSES)
    ):
        parts.append(in_list("diagnosis", diagnoses))
    if sexes := str_list(flt.sexes, "filter.sexes", lambda v, w: check_str(v, w, allowed=SEXES)):
        parts.append(in_list("sex", sexes))
    if bands := str_list(
        flt.age_bands, "filter.age_bands", lambda v, w: check_str(v, w, pattern=AGE_BAND_RE)
    ):
        parts.append(in_list("age_band", bands))
    if not isinstance(flt.labelled_only, bool):
        raise InvalidQuery("filter.labelled_only must be a bool")
    if flt.labelled_only:
        parts.append('diagnosis != ""')
    day_from = (
        study_day(check_date(flt.study_date_from, "filter.study_date_from")) if flt.study_date_from else 0
    )
    day_to = study_day(check_date(flt.study_date_to, "filter.study_date_to")) if flt.study_date_to else 0
    if day_from and day_to and day_from > day_to:
        raise InvalidQuery("filter.study_date_from is after filter.study_date_to")
    if day_from or day_to:
        parts.append("study_day > 0")  # a date range never matches a study of unknown date
        if day_from:
            parts.append(f"study_day >= {day_from}")
        if day_to:
            parts.append(f"study_day <= {day_to}")
    if flt.exclude_patient_key:
        patient = check_key(flt.exclude_patient_key, "filter.exclude_patient_key")
        parts.append(f"patient_key != {quote(patient)}")
    excluded = str_list(flt.exclude_study_keys, "filter.exclude_study_keys", check_key)
    if len(excluded) > MAX_EXCLUDED:
        raise InvalidQuery(f"filter.exclude_study_keys holds more than {MAX_EXCLUDED} keys")
    if excluded:
        parts.append(in_list("study_key", excluded, negate=True))
    if flt.model_version:
        version = check_str(flt.model_version, "filter.model_version", pattern=MODEL_RE)
        parts.append(f"model_version == {quote(version)}")
    return " and ".join(parts)
