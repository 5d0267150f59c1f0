"""The collection's schema and COSINE index: how they are created, and the check of an existing one.

One entity per study (primary key ``study_key``). Index build parameters are sent nested under
``params``, the one form both Milvus Lite and the server read. A collection that cannot hold this
store's rows, or compares embeddings by another metric, is a :class:`SchemaMismatch`: the service
must refuse to start rather than write or compare what does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymilvus import DataType, MilvusClient

from cxrmesh.search.errors import SchemaMismatch

INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW")

# Per-index defaults; build params are what the server keeps, search params are sent with every search.
DEFAULT_BUILD_PARAMS: dict[str, dict[str, int]] = {
    "FLAT": {},
    "IVF_FLAT": {"nlist": 1024},
    "HNSW": {"M": 16, "efConstruction": 200},
}
DEFAULT_SEARCH_PARAMS: dict[str, dict[str, int]] = {
    "FLAT": {},
    "IVF_FLAT": {"nprobe": 32},
    "HNSW": {"ef": 128},
}

REF_MAX = 1024
CLINICAL_MAX = 2048

# Field name -> (type, type params). study_day (yyyymmdd, 0 unknown) exists for date-range filters, which
# are integer comparisons on every Milvus version; study_date keeps the text the caller gave.
SCALARS: dict[str, tuple[DataType, dict[str, int]]] = {
    "study_key": (DataType.VARCHAR, {"max_length": 128}),
    "patient_key": (DataType.VARCHAR, {"max_length": 128}),
    "model_version": (DataType.VARCHAR, {"max_length": 64}),
    "site": (DataType.VARCHAR, {"max_length": 64}),
    "diagnosis": (DataType.VARCHAR, {"max_length": 32}),
    "outcome": (DataType.INT8, {}),
    "age_band": (DataType.VARCHAR, {"max_length": 16}),
    "sex": (DataType.VARCHAR, {"max_length": 8}),
    "study_date": (DataType.VARCHAR, {"max_length": 10}),
    "study_day": (DataType.INT32, {}),
    "attention_ref": (DataType.VARCHAR, {"max_length": REF_MAX}),
    # the case's clinical variables as compact JSON (returned with similar cases, never filtered on)
    "clinical": (DataType.VARCHAR, {"max_length": CLINICAL_MAX}),
}
VECTOR = "embedding"
OUTPUT_FIELDS = [*SCALARS, VECTOR]


def build_schema(c: MilvusClient, dim: int) -> Any:
    schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
    for name, (dtype, params) in SCALARS.items():
        schema.add_field(name, dtype, is_primary=(name == "study_key"), **params)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
    return schema


def build_index_params(c: MilvusClient, index: str, build_params: Mapping[str, int]) -> Any:
    params = c.prepare_index_params()
    # Nested under "params": Milvus Lite reads only that form; the server accepts it too.
    params.add_index(VECTOR, index_type=index, metric_type="COSINE", params={"params": dict(build_params)})
    return params


def check_schema(desc: Mapping[str, Any], collection: str, dim: int) -> None:
    """SchemaMismatch unless the described collection has exactly this store's fields (or longer ones)."""
    have = {f["name"]: f for f in desc.get("fields", [])}
    want = {name: (dtype, params) for name, (dtype, params) in SCALARS.items()}
    want[VECTOR] = (DataType.FLOAT_VECTOR, {"dim": dim})
    problems: list[str] = []
    for name, (dtype, params) in want.items():
        f = have.get(name)
        if f is None:
            problems.append(f"field {name} is missing")
        elif f.get("type") != dtype:
            problems.append(f"field {name} is {f.get('type')!r}, expected {dtype!r}")
        elif "dim" in params and int(f.get("params", {}).get("dim", -1)) != params["dim"]:
            have_dim = f.get("params", {}).get("dim")
            problems.append(f"{name} has dim {have_dim}, this store uses {params['dim']}")
        elif "max_length" in params and int(f.get("params", {}).get("max_length", 0)) < params["max_length"]:
            problems.append(f"field {name} is shorter than {params['max_length']} characters")
    if not have.get("study_key", {}).get("is_primary"):
        problems.append("study_key is not the primary key")
    extra = sorted(set(have) - set(want))
    if extra:
        problems.append(f"unexpected fields {', '.join(extra)}")
    if problems:
        raise SchemaMismatch(
            f"collection {collection} does not match this store: {'; '.join(problems)}. "
            "Point the store at another collection or migrate this one."
        )


def check_index(desc: Mapping[str, Any], collection: str, index: str) -> None:
    """SchemaMismatch unless the described index is a COSINE index of the configured type."""
    metric = str(desc.get("metric_type", "")).upper()
    kind = str(desc.get("index_type", "")).upper()
    if metric != "COSINE":
        raise SchemaMismatch(
            f"collection {collection} is indexed with metric {metric or '?'}, not COSINE; "
            "its similarities would not be cosines"
        )
    if kind != index:
        raise SchemaMismatch(
            f"collection {collection} has a {kind or '?'} index, this store is configured for "
            f"{index}; configure index={kind!r} or rebuild the index"
        )
