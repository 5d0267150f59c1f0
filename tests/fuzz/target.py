"""The fuzzed path: bytes -> read -> validate -> decode_pixels -> normalise; only DicomRejected may escape.

normalise (the display pipeline every admitted image goes through) is included so a header the rules
let through but the pixel pipeline cannot handle counts as a crash too.

Any other exception is a crash (a parser bug an attacker can trigger to fail a request in an
unplanned way); a call that runs past the per-input time bound is a hang.
"""

from __future__ import annotations

import warnings

from cxrmesh.dicom import DicomRejected, decode_pixels, normalise, read_dicom, validate


def admit_or_refuse(data: bytes) -> str:
    """'admitted' or the rejection code; raises anything that is not a ``DicomRejected``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = read_dicom(data)
            validate(ds)
            normalise(ds, decode_pixels(ds))
        except DicomRejected as rejected:
            return rejected.code
    return "admitted"
