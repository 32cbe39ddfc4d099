"""A `buf lint`-style check of the protos, over the descriptors protoc builds from them.

Rules (after Google's API design guide and buf's DEFAULT lint set):
- every service, rpc, message, field, enum and enum value has a leading comment;
- every enum's zero value is ``<ENUM_NAME>_UNSPECIFIED`` (in UPPER_SNAKE_CASE);
- fields are lower_snake_case;
- each rpc takes ``<Rpc>Request`` and returns ``<Rpc>Response`` of its own package,
  and no two rpcs (of any service) share a request or response message;
- the comments name no server flag (``--max-batch``) and no server default: the
  contract is what any deployment answers, not how one is configured.

The public package ``recsys.v1`` holds only what clients may call (the Gateway);
the internal QueryService, IndexService and ModelAdmin (the model-status and
reload RPCs both backend servers serve) live in ``recsys.internal.v1``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from procs import REPO

PROTO_ROOT = REPO / "protos"
PUBLIC_SERVICE = "recsys.v1.Gateway"

# FileDescriptorProto / DescriptorProto field numbers used in SourceCodeInfo paths.
MESSAGE, ENUM, SERVICE = 4, 5, 6
FIELD, NESTED_MESSAGE, NESTED_ENUM = 2, 3, 4
ENUM_VALUE, METHOD = 2, 2


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[descriptor_pb2.FileDescriptorProto]:
    out = tmp_path_factory.mktemp("descriptors") / "set.pb"
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("recsys/**/*.proto"))
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    assert protoc.main([
        "grpc_tools.protoc", f"--proto_path={PROTO_ROOT}", f"--proto_path={well_known}",
        f"--descriptor_set_out={out}", "--include_source_info", *sources,
    ]) == 0
    return list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location}


def _elements(file):
    """(path, what, name) of every element that needs a comment."""

    def message(path, msg, prefix):
        name = f"{prefix}.{msg.name}"
        yield path, "message", name
        for i, field in enumerate(msg.field):
            yield (*path, FIELD, i), "field", f"{name}.{field.name}"
        for i, nested in enumerate(msg.nested_type):
            if not nested.options.map_entry:
                yield from message((*path, NESTED_MESSAGE, i), nested, name)
        for i, enum in enumerate(msg.enum_type):
            yield from enum_elements((*path, NESTED_ENUM, i), enum, name)

    def enum_elements(path, enum, prefix):
        yield path, "enum", f"{prefix}.{enum.name}"
        for i, value in enumerate(enum.value):
            yield (*path, ENUM_VALUE, i), "enum value", f"{prefix}.{value.name}"

    for i, msg in enumerate(file.message_type):
        yield from message((MESSAGE, i), msg, file.package)
    for i, enum in enumerate(file.enum_type):
        yield from enum_elements((ENUM, i), enum, file.package)
    for i, service in enumerate(file.service):
        yield (SERVICE, i), "service", f"{file.package}.{service.name}"
        for j, method in enumerate(service.method):
            yield (SERVICE, i, METHOD, j), "rpc", f"{file.package}.{service.name}.{method.name}"


def test_every_element_has_a_leading_comment(files):
    undocumented = []
    for file in files:
        comments = _comments(file)
        undocumented += [f"{what} {name}" for path, what, name in _elements(file) if not comments.get(path)]
    assert not undocumented, "add a leading comment to: " + ", ".join(undocumented)


def _all_enums(files):
    def nested(msg):
        yield from msg.enum_type
        for inner in msg.nested_type:
            yield from nested(inner)

    for file in files:
        yield from file.enum_type
        for msg in file.message_type:
            yield from nested(msg)


def test_enums_start_with_unspecified(files):
    enums = list(_all_enums(files))
    assert enums, "no enums found: the walk is broken"
    for enum in enums:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper()
        assert enum.value[0].number == 0 and enum.value[0].name == f"{prefix}_UNSPECIFIED", enum.name
        assert all(v.name.startswith(prefix + "_") for v in enum.value), f"{enum.name} values must start with {prefix}_"


def test_fields_are_lower_snake_case(files):
    bad = [
        f"{msg.name}.{field.name}"
        for file in files for msg in file.message_type for field in msg.field
        if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", field.name)
    ]
    assert not bad, bad


def _gateway(files) -> descriptor_pb2.ServiceDescriptorProto:
    [service] = [s for f in files for s in f.service if f"{f.package}.{s.name}" == PUBLIC_SERVICE]
    return service


def test_every_rpc_has_its_own_request_and_response(files):
    assert len(_gateway(files).method) >= 4
    seen: dict[str, str] = {}
    for file in files:
        for service in file.service:
            for method in service.method:
                rpc = f"{file.package}.{service.name}.{method.name}"
                assert method.input_type == f".{file.package}.{method.name}Request", rpc
                assert method.output_type == f".{file.package}.{method.name}Response", rpc
                for message in (method.input_type, method.output_type):
                    assert message not in seen, f"{message} is used by both {seen[message]} and {rpc}"
                    seen[message] = rpc


def test_the_public_package_holds_only_the_gateway(files):
    public = {f"{f.package}.{s.name}" for f in files for s in f.service if f.package == "recsys.v1"}
    assert public == {PUBLIC_SERVICE}
    internal = {f"{f.package}.{s.name}" for f in files for s in f.service if f.package != "recsys.v1"}
    assert internal == {"recsys.internal.v1.QueryService", "recsys.internal.v1.IndexService", "recsys.internal.v1.ModelAdmin"}


def test_gateway_messages_are_not_used_by_internal_rpcs(files):
    public = {t for m in _gateway(files).method for t in (m.input_type, m.output_type)}
    for file in files:
        for service in file.service:
            if f"{file.package}.{service.name}" == PUBLIC_SERVICE:
                continue
            for method in service.method:
                shared = public & {method.input_type, method.output_type}
                assert not shared, f"{service.name}.{method.name} uses the Gateway's {shared}"


def test_comments_name_no_server_flag_or_default(files):
    offending = []
    for file in files:
        for loc in file.source_code_info.location:
            text = " ".join((loc.leading_comments, loc.trailing_comments, *loc.leading_detached_comments))
            if re.search(r"--[a-z]", text) or re.search(r"\(default\b|\bdefaults? (is|to)\b|unless configured", text):
                offending.append(f"{file.name}: {text.strip()[:100]!r}")
    assert not offending, offending
