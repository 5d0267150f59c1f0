"""Write the API reference of the cxrmesh.v1 protos into docs/api.md (``python protos/gen_api_docs.py``).

The protos are the contract with other services, so their reference is generated from them rather than
kept by hand: protoc (the pinned grpcio-tools one that also generates src/cxrmesh/v1) compiles them into
a descriptor set with their comments, and this script renders the services, methods, messages, fields
and enums as Markdown. docs/api.md keeps its hand-written introduction above ``MARKER``; everything
below it is replaced. tests/unit/test_api_contract.py fails when the committed page is stale.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parent
PACKAGE = "cxrmesh/v1"
DOC = PROTOS.parent / "docs" / "api.md"
MARKER = "<!-- Generated below by protos/gen_api_docs.py from protos/cxrmesh/v1: do not edit by hand. -->"

# Paths into FileDescriptorProto / DescriptorProto / ... (descriptor.proto field numbers) that
# SourceCodeInfo uses to attach comments to declarations.
_SYNTAX, _MESSAGE, _ENUM, _SERVICE = 12, 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM = 2, 3, 4
_VALUE = 2
_METHOD = 2

_SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}


def descriptor_set(protos: Path = PROTOS) -> descriptor_pb2.FileDescriptorSet:
    """Compile every .proto under ``protos``/cxrmesh/v1 into descriptors that keep their comments."""
    sources = sorted((protos / PACKAGE).glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.binpb"
        args = [
            "protoc",
            f"-I{protos}",
            f"-I{include}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *(str(s.relative_to(protos)) for s in sources),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class _File:
    """One .proto file: its comments by declaration path and the names it defines."""

    def __init__(self, proto: descriptor_pb2.FileDescriptorProto, local: set[str]) -> None:
        self.proto = proto
        self.local = local
        self.comments: dict[tuple[int, ...], str] = {}
        for loc in proto.source_code_info.location:
            text = " ".join(f"{loc.leading_comments} {loc.trailing_comments}".split())
            if text:
                self.comments[tuple(loc.path)] = text

    def comment(self, *path: int) -> str:
        return self.comments.get(path, "").replace("|", "\\|")

    def type_ref(self, name: str) -> str:
        """A linked name for a type of this API, the full name for another (e.g. a well-known type)."""
        full = name.lstrip(".")
        if full in self.local:
            return f"[{full.removeprefix('cxrmesh.v1.')}](#{full})"
        return f"`{full}`"


def _field_type(file: _File, field: descriptor_pb2.FieldDescriptorProto, maps: dict) -> str:
    if field.type_name.lstrip(".") in maps:
        key, value = maps[field.type_name.lstrip(".")]
        if value.type_name:
            return f"map&lt;{_SCALARS[key.type]}, {file.type_ref(value.type_name)}&gt;"
        return f"`map<{_SCALARS[key.type]}, {_SCALARS[value.type]}>`"
    if field.type_name:
        return file.type_ref(field.type_name)
    return f"`{_SCALARS[field.type]}`"


def _field_label(message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.proto3_optional:
        return "optional"
    if field.HasField("oneof_index"):
        return f"oneof `{message.oneof_decl[field.oneof_index].name}`"
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return "repeated"
    return ""


def _message(file: _File, message, prefix: str, path: tuple[int, ...], maps: dict) -> list[str]:
    full = f"{prefix}.{message.name}"
    if message.options.map_entry:
        return []
    lines = [f'<a id="{full}"></a>', f"### message {full.removeprefix('cxrmesh.v1.')}", ""]
    if note := file.comment(*path):
        lines += [note, ""]
    if message.field:
        lines += ["| Field | Number | Type | Label | Description |", "|---|---|---|---|---|"]
        for i, field in enumerate(message.field):
            kind = _field_type(file, field, maps)
            label = "" if field.type_name.lstrip(".") in maps else _field_label(message, field)
            lines.append(
                f"| `{field.name}` | {field.number} | {kind} | {label} | {file.comment(*path, _FIELD, i)} |"
            )
        lines.append("")
    for i, enum in enumerate(message.enum_type):
        lines += _enum(file, enum, full, (*path, _NESTED_ENUM, i))
    for i, nested in enumerate(message.nested_type):
        lines += _message(file, nested, full, (*path, _NESTED, i), maps)
    return lines


def _enum(file: _File, enum, prefix: str, path: tuple[int, ...]) -> list[str]:
    full = f"{prefix}.{enum.name}"
    lines = [f'<a id="{full}"></a>', f"### enum {full.removeprefix('cxrmesh.v1.')}", ""]
    if note := file.comment(*path):
        lines += [note, ""]
    lines += ["| Name | Number | Description |", "|---|---|---|"]
    for i, value in enumerate(enum.value):
        lines.append(f"| `{value.name}` | {value.number} | {file.comment(*path, _VALUE, i)} |")
    return [*lines, ""]


def _service(file: _File, service, index: int, package: str) -> list[str]:
    full = f"{package}.{service.name}"
    lines = [f'<a id="{full}"></a>', f"### service {service.name}", ""]
    if note := file.comment(_SERVICE, index):
        lines += [note, ""]
    lines += ["| Method | Request | Response | Description |", "|---|---|---|---|"]
    for i, method in enumerate(service.method):
        request = ("stream " if method.client_streaming else "") + file.type_ref(method.input_type)
        response = ("stream " if method.server_streaming else "") + file.type_ref(method.output_type)
        lines.append(
            f"| `{method.name}` | {request} | {response} | {file.comment(_SERVICE, index, _METHOD, i)} |"
        )
    return [*lines, ""]


def _names(prefix: str, messages, enums) -> set[str]:
    names = {f"{prefix}.{e.name}" for e in enums}
    for message in messages:
        full = f"{prefix}.{message.name}"
        names |= {full} | _names(full, message.nested_type, message.enum_type)
    return names


def _map_entries(prefix: str, messages) -> dict[str, tuple]:
    entries = {}
    for message in messages:
        full = f"{prefix}.{message.name}"
        if message.options.map_entry:
            entries[full] = (message.field[0], message.field[1])
        entries |= _map_entries(full, message.nested_type)
    return entries


def render(files: descriptor_pb2.FileDescriptorSet) -> str:
    """The generated part of docs/api.md: a section per file with its services, messages and enums."""
    protos = sorted((f for f in files.file if f.name.startswith(PACKAGE + "/")), key=lambda f: f.name)
    local: set[str] = set()
    maps: dict[str, tuple] = {}
    for proto in protos:
        local |= _names(proto.package, proto.message_type, proto.enum_type)
        maps |= _map_entries(proto.package, proto.message_type)
    lines = [MARKER, "", "## Services", ""]
    for proto in protos:
        for service in proto.service:
            lines.append(f"- [{service.name}](#{proto.package}.{service.name}) (`{proto.name}`)")
    lines.append("")
    for proto in protos:
        file = _File(proto, local)
        lines += [f"## {proto.name}", ""]
        if note := file.comment(_SYNTAX):
            lines += [note, ""]
        for i, service in enumerate(proto.service):
            lines += _service(file, service, i, proto.package)
        for i, enum in enumerate(proto.enum_type):
            lines += _enum(file, enum, proto.package, (_ENUM, i))
        for i, message in enumerate(proto.message_type):
            lines += _message(file, message, proto.package, (_MESSAGE, i), maps)
    return "\n".join(lines).rstrip() + "\n"


def document(current: str, files: descriptor_pb2.FileDescriptorSet) -> str:
    """``current`` (the committed page) with everything from ``MARKER`` on regenerated."""
    intro, found, _ = current.partition(MARKER)
    if not found:
        raise ValueError(f"{DOC} has no line {MARKER!r}")
    return intro + render(files)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DOC
    target.write_text(document(DOC.read_text(), descriptor_set()))
    print(target)
