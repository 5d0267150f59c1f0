"""Is a Part 10 file cut short? Tells an interrupted transfer from a malformed export.

pydicom parses a truncated file without complaint (a short last value, a header cut in half), so
this walks the element stream with pydicom's own ``data_element_generator`` (long values deferred,
so only their declared length is read) and compares what each element declares with the bytes left.
pydicom does the decoding (VRs, 16/32-bit lengths, undefined-length sequences and encapsulated pixel
data, on which it raises when their delimiter is missing); what is kept here is only the question
pydicom does not ask: did every element, and the stream, end before the bytes did? A stream it
cannot make sense of (an unknown VR) is left to the full parse in ``read.read_dicom`` to judge, as
malformed rather than cut short.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VR

from cxrmesh.contracts.limits import MAX_DICOM_BYTES

_PREAMBLE = 132  # 128-byte preamble + "DICM"
_UNDEFINED = 0xFFFFFFFF
_DEFER_BYTES = 1024  # longer values are skipped, not read: only their declared length matters here
_KNOWN_VRS = frozenset(v.value for v in VR)
_META_GROUP_LENGTH, _TRANSFER_SYNTAX = 0x00020000, 0x00020010


class _Walk(NamedTuple):
    problem: str | None  # where the stream is cut short, None if it is complete (or not understood)
    end: int  # byte after the last complete element
    elements: dict[int, RawDataElement]  # the defined-length elements met at the top level


class _Unparseable(Exception):
    """The stream is not what pydicom's element reader understands; leave judgement to the full parse."""


def truncation(raw: bytes) -> str | None:
    """Describe where the file ends inside an element, or None if every element is complete."""
    try:
        meta = _walk(raw, _PREAMBLE, implicit=False, little=True, meta=True)
        if meta.problem:
            return meta.problem
        length = meta.elements.get(_META_GROUP_LENGTH)
        if length is not None and length.length == 4:
            declared = length.value_tell + 4 + struct.unpack("<L", length.value)[0]
            if declared > len(raw):
                return f"the file meta header declares {declared} bytes but the file has only {len(raw)}"
        ts_element = meta.elements.get(_TRANSFER_SYNTAX)
        if ts_element is None:
            return None
        # (a value over _DEFER_BYTES is deferred: read it from the bytes; a UID is 64 characters at most)
        value = raw[ts_element.value_tell : ts_element.value_tell + min(ts_element.length, 64)]
        ts = UID(value.rstrip(b"\x00 ").decode("ascii", "replace"))
        body = raw[meta.end :]
        if ts == DeflatedExplicitVRLittleEndian:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                body = inflater.decompress(body, MAX_DICOM_BYTES + 1)  # bounds.py refuses more
            except zlib.error:
                return None
            if not inflater.eof:
                return "the deflated data set stream ends before its end marker"
        implicit, little = ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian
        return _walk(body, 0, implicit=implicit, little=little, meta=False).problem
    except _Unparseable:
        return None


def _walk(buf: bytes, pos: int, *, implicit: bool, little: bool, meta: bool) -> _Walk:
    """Read elements from ``pos`` (only group 0002 when ``meta``) and report the first one cut short."""
    fp = DicomBytesIO(buf)
    fp.name = "<received bytes>"  # pydicom's warning for an item cut short concatenates it (None: TypeError)
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    fp.seek(pos)
    stop = (lambda tag, _vr, _length: BaseTag(tag).group != 0x0002) if meta else None
    elements: dict[int, RawDataElement] = {}
    end = pos
    try:
        for elem in data_element_generator(fp, implicit, little, stop_when=stop, defer_size=_DEFER_BYTES):
            if not implicit and elem.VR not in _KNOWN_VRS:
                raise _Unparseable
            if isinstance(elem, RawDataElement) and elem.length != _UNDEFINED:
                if elem.value_tell + elem.length > len(buf):
                    left = len(buf) - elem.value_tell
                    problem = f"element {Tag(elem.tag)} declares {elem.length} bytes but only {left} remain"
                    return _Walk(f"{problem} in the file", end, elements)
                elements[elem.tag] = elem
            if fp.tell() > len(buf):  # an undefined-length value whose delimiter is cut
                return _Walk(f"element {Tag(elem.tag)} ends after the end of the file", end, elements)
            end = fp.tell()
    except (EOFError, OSError, struct.error) as exc:  # pydicom's reader ran out of bytes
        where = "file meta header" if meta else "data set"
        return _Walk(f"the {where} ends inside an element after byte {end} ({exc})", end, elements)
    except Exception as exc:  # any other failure of pydicom's reader: malformed, for the full parse to judge
        raise _Unparseable from exc
    left = len(buf) - end
    if left and (not meta or left < 8):  # (the meta walk stops before the first non-0002 element)
        return _Walk(f"{left} stray bytes at byte {end} where an element header should start", end, elements)
    return _Walk(None, end, elements)
