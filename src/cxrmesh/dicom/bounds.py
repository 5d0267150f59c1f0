"""Bounds on parsing an untrusted DICOM, checked from the declared lengths before any value is read.

``pydicom.dcmread`` reads every value into memory, inflates a deflated data set in full and parses
undefined-length sequences recursively, so what a file merely declares (a 100 MiB private string, a
million empty items, sequences nested a thousand deep, a deflate stream that inflates to gigabytes)
costs memory and stack in proportion. This module walks the element headers only (tag, VR, length:
the file's own framing, PS3.5 section 7) over the bytes already received, charges every element,
item and fragment to one budget and refuses the file as soon as a limit of
:mod:`cxrmesh.contracts.limits` is passed. Values are never copied or decoded here.

A stream this walk cannot frame (bytes cut short, an item tag missing) is left alone: the truncation
check and pydicom's full parse in ``read.read_dicom`` judge it, with everything before that point bounded.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VR

from cxrmesh.contracts import limits
from cxrmesh.dicom.rejection import DicomRejected

_PREAMBLE = 132  # 128-byte preamble + "DICM"
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel Data, Float / Double Float Pixel Data
_TRANSFER_SYNTAX = 0x00020010
_KNOWN_VRS = frozenset(v.value.encode() for v in VR)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})  # values pydicom keeps as bytes


class _Unframed(Exception):
    """The byte stream stops making sense as elements here; later checks judge the rest."""


@dataclass
class _Header:
    tag: int
    vr: str | None  # None: implicit VR (or an item / delimiter)
    length: int
    value: int  # offset of the value's first byte


def check_bounds(raw: bytes) -> None:
    """Refuse a Part 10 file whose declared structure passes a parsing limit (``DicomRejected``)."""
    walker = _Walker(raw, implicit=False, little=True)
    try:
        meta_end, ts = walker.meta(_PREAMBLE)
    except _Unframed:
        return
    if ts == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            body = inflater.decompress(raw[meta_end:], limits.MAX_DICOM_BYTES + 1)
        except zlib.error:
            return  # not a deflate stream: pydicom's parse refuses it as not DICOM
        if len(body) > limits.MAX_DICOM_BYTES:
            raise DicomRejected(
                "too_large",
                f"the deflated data set inflates to more than {limits.MAX_DICOM_BYTES} bytes "
                f"({limits.MAX_DICOM_BYTES >> 20} MiB), the limit of one radiograph. Send it uncompressed "
                "or with JPEG 2000 pixel data.",
            )
        body_walker = _Walker(body, implicit=False, little=True, budget=walker.budget)
        start = 0
    else:
        body_walker = _Walker(
            raw, implicit=ts == ImplicitVRLittleEndian, little=ts != ExplicitVRBigEndian, budget=walker.budget
        )
        start = meta_end
    try:
        body_walker.dataset(start, len(body_walker.buf), depth=0)
    except _Unframed:
        return


@dataclass
class _Budget:
    elements: int = 0


class _Walker:
    """Element headers of one encoding (implicit/explicit VR, little/big endian) over one buffer."""

    def __init__(self, buf: bytes, *, implicit: bool, little: bool, budget: _Budget | None = None) -> None:
        self.buf, self.implicit = buf, implicit
        self.order = "<" if little else ">"
        self.budget = budget or _Budget()

    def meta(self, pos: int) -> tuple[int, str]:
        """Walk the group 0002 elements; return where the data set starts and its transfer syntax."""
        ts = ""
        while pos + 8 <= len(self.buf):
            head = self._header(pos)
            if head.tag >> 16 != 0x0002:
                break
            self._charge(head)
            if head.length == _UNDEFINED:
                raise _Unframed
            if head.tag == _TRANSFER_SYNTAX:
                value = self.buf[head.value : head.value + head.length]
                ts = value.rstrip(b"\x00 ").decode("ascii", "replace")
            pos = head.value + head.length
        return pos, ts

    def dataset(self, pos: int, end: int, depth: int) -> int:
        """Walk elements until `end` or an item delimiter; return the offset after the last one."""
        while pos < end:
            head = self._header(pos)
            if head.tag in (_ITEM_END, _SEQUENCE_END):
                return head.value
            self._charge(head)
            if head.length == _UNDEFINED:
                pos = self._undefined(head, depth)
            else:
                self._check_size(head.tag, head.vr, head.length)
                if self._is_sequence(head):
                    walker = self._sequence_walker(head)
                    walker.items(head.value, min(head.value + head.length, len(self.buf)), depth + 1)
                pos = head.value + head.length
        return pos

    def items(self, pos: int, end: int, depth: int) -> int:
        """Walk the items of a sequence until `end` or its delimiter; return the offset after.

        Like pydicom, any tag but the sequence delimiter is taken as an item header (tag, 32-bit length).
        """
        if depth > limits.MAX_SEQUENCE_DEPTH:
            raise DicomRejected(
                "nesting_too_deep",
                f"sequences are nested more than {limits.MAX_SEQUENCE_DEPTH} deep; a radiograph's header "
                "nests a few levels. The file is malformed or hostile; re-export it from the PACS.",
            )
        while pos < end:
            if pos + 8 > len(self.buf):
                raise _Unframed
            group, elem, length = struct.unpack_from(f"{self.order}HHL", self.buf, pos)
            item = _Header(group << 16 | elem, None, length, pos + 8)
            if item.tag == _SEQUENCE_END:
                return item.value
            self._charge(item)
            stop = len(self.buf) if length == _UNDEFINED else min(item.value + length, len(self.buf))
            pos = self.dataset(item.value, stop, depth)
        return pos

    def _undefined(self, head: _Header, depth: int) -> int:
        """An undefined-length value: encapsulated pixel data, a sequence, or bytes up to a delimiter."""
        if head.tag in _PIXEL_TAGS:
            try:
                return self._fragments(head)
            except _Unframed:
                return self._to_delimiter(head)
        following = self._header(head.value).tag if head.value + 8 <= len(self.buf) else None
        if following not in (_ITEM, _SEQUENCE_END):
            return self._to_delimiter(head)
        end = self.items(head.value, len(self.buf), depth + 1)
        if (head.vr or _dictionary_vr(head.tag)) not in ("SQ", "UN"):
            self._check_size(head.tag, head.vr, end - head.value)  # pydicom reads it as one value
        return end

    def _to_delimiter(self, head: _Header) -> int:
        """pydicom reads an undefined-length value that is not a sequence up to the sequence delimiter."""
        delimiter = struct.pack(f"{self.order}HHL", 0xFFFE, 0xE0DD, 0)
        stop = self.buf.find(delimiter, head.value)
        if stop < 0:
            raise _Unframed
        self._check_size(head.tag, head.vr, stop - head.value)
        return stop + 8

    def _fragments(self, head: _Header) -> int:
        pos, total = head.value, 0
        while pos + 8 <= len(self.buf):
            item = self._header(pos)
            if item.tag == _SEQUENCE_END:
                return item.value
            if item.tag != _ITEM or item.length == _UNDEFINED:
                raise _Unframed
            self._charge(item)
            total += item.length
            self._check_size(head.tag, head.vr, total)
            pos = item.value + item.length
        raise _Unframed

    def _header(self, pos: int) -> _Header:
        if pos + 8 > len(self.buf):
            raise _Unframed
        group, elem = struct.unpack_from(f"{self.order}HH", self.buf, pos)
        tag = group << 16 | elem
        vr = self.buf[pos + 4 : pos + 6]
        if self.implicit or group == 0xFFFE or vr not in _KNOWN_VRS:
            return _Header(tag, None, struct.unpack_from(f"{self.order}L", self.buf, pos + 4)[0], pos + 8)
        if vr in _LONG_VRS:
            if pos + 12 > len(self.buf):
                raise _Unframed
            (length,) = struct.unpack_from(f"{self.order}L", self.buf, pos + 8)
            return _Header(tag, vr.decode(), length, pos + 12)
        (length,) = struct.unpack_from(f"{self.order}H", self.buf, pos + 6)
        return _Header(tag, vr.decode(), length, pos + 8)

    def _charge(self, head: _Header) -> None:
        self.budget.elements += 1
        if self.budget.elements > limits.MAX_ELEMENTS:
            raise DicomRejected(
                "too_many_elements",
                f"the file holds more than {limits.MAX_ELEMENTS} elements, items and fragments (a "
                "radiograph's header has a few hundred); stopped at byte "
                f"{head.value}. The file is malformed or hostile; re-export it from the PACS.",
            )

    def _check_size(self, tag: int, vr: str | None, length: int) -> None:
        vr = vr or _dictionary_vr(tag)
        if tag in _PIXEL_TAGS:
            cap, what = limits.MAX_PIXEL_DATA_BYTES, "pixel data"
        elif vr.split(" or ")[-1] in _BYTES_VRS:
            cap, what = limits.MAX_ELEMENT_BYTES, "a binary element"
        else:
            cap, what = limits.MAX_VALUE_BYTES, f"a {vr} element"
        if length > cap:
            raise DicomRejected(
                "element_too_large",
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes; the limit for "
                f"{what} is {cap} bytes. Remove the oversized (often private) element, or re-export "
                "the image.",
            )

    def _is_sequence(self, head: _Header) -> bool:
        if head.vr == "SQ":
            return True
        return head.vr in (None, "UN") and _dictionary_vr(head.tag) == "SQ"

    def _sequence_walker(self, head: _Header) -> _Walker:
        """pydicom reads a known sequence sent as UN as implicit VR little endian (PS3.5 6.2.2)."""
        if head.vr == "UN":
            return _Walker(self.buf, implicit=True, little=True, budget=self.budget)
        return self


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"
