#!/usr/bin/env python3
"""Check that proto/inference/*.proto is wire-compatible with the descriptors
shipped in the `tritonclient[grpc]` Python package.

The script compiles our .proto files into a FileDescriptorSet (with
grpc_tools.protoc if installed, otherwise a `protoc` binary on PATH), loads
them into a private descriptor pool, and compares them against the compiled
descriptors in tritonclient:

* every message of tritonclient that also exists in ours: each field's number,
  name, type, label (repeated or not), referenced message/enum type and oneof
  membership;
* every enum that exists in both: each value's number;
* the GRPCInferenceService: each RPC's request/response types and streaming
  flags.

Every message reachable from the RPCs we are required to serve must exist in
ours. Messages, enums, fields and RPCs that only tritonclient has are listed
as informational (except fields of shared messages: a missing field is a
mismatch). Exits 0 when there are no mismatches, 1 on any mismatch, 2 when the
check cannot run (no protoc, no tritonclient).

Usage: .venv/bin/python scripts/check_proto_compat.py [--proto-dir DIR] [-v]
"""

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FieldDescriptor

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PROTO_DIR = os.path.join(REPO_ROOT, "proto", "inference")
# Our files are compiled the way proto/build.rs does it: the include root is the
# parent of --proto-dir, and imports name files as "inference/<file>.proto".
PROTO_FILES = ["model_config.proto", "grpc_service.proto"]
PACKAGE = "inference"
SERVICE = "inference.GRPCInferenceService"

# RPCs our server must expose with exactly tritonclient's signature.
REQUIRED_RPCS = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
]

TYPE_NAMES = {
    v: k[len("TYPE_"):].lower()
    for k, v in vars(FieldDescriptor).items()
    if k.startswith("TYPE_")
}
LABEL_NAMES = {
    FieldDescriptor.LABEL_OPTIONAL: "optional",
    FieldDescriptor.LABEL_REQUIRED: "required",
    FieldDescriptor.LABEL_REPEATED: "repeated",
}


def load_reference():
    """Return (service_module, model_config_module) from tritonclient."""
    candidates = [
        ("tritonclient.grpc.service_pb2", "tritonclient.grpc.model_config_pb2"),
        ("tritonclient.grpc.grpc_service_pb2", "tritonclient.grpc.model_config_pb2"),
    ]
    errors = []
    for svc_name, cfg_name in candidates:
        try:
            return importlib.import_module(svc_name), importlib.import_module(cfg_name)
        except ImportError as e:  # try the next layout
            errors.append(f"{svc_name}: {e}")
    sys.exit("cannot import tritonclient descriptors (pip install 'tritonclient[grpc]'):\n  "
             + "\n  ".join(errors))


def compile_ours(proto_dir):
    """Compile our protos and return a FileDescriptorSet."""
    with tempfile.TemporaryDirectory(prefix="proto_compat_") as tmp:
        out = os.path.join(tmp, "descriptors.pb")
        proto_dir = os.path.abspath(proto_dir)
        root = os.path.dirname(proto_dir)
        args = [f"-I{root}", f"--descriptor_set_out={out}", "--include_imports"]
        files = [os.path.join(proto_dir, f) for f in PROTO_FILES]
        for f in files:
            if not os.path.isfile(f):
                print(f"ERROR: missing {f}")
                sys.exit(1)
        try:
            from grpc_tools import protoc  # type: ignore
            import importlib.resources as res
            try:
                wkt = str(res.files("grpc_tools") / "_proto")
            except Exception:  # pragma: no cover - very old Python
                wkt = None
            cmd = ["grpc_tools.protoc"] + args + ([f"-I{wkt}"] if wkt else []) + files
            tool = "grpc_tools.protoc"
            rc = protoc.main(cmd)
        except ImportError:
            exe = shutil.which("protoc")
            if not exe:
                print("ERROR: neither grpc_tools nor protoc is available; "
                      "install with: pip install --no-deps grpcio-tools")
                sys.exit(2)
            tool = exe
            rc = subprocess.call([exe] + args + files)
        if rc != 0:
            print(f"ERROR: {tool} failed to compile our protos (rc={rc})")
            sys.exit(1)
        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as fh:
            fds.ParseFromString(fh.read())
    print(f"compiled {', '.join(PROTO_FILES)} with {tool}")
    return fds


def walk_messages(msg_descs):
    for m in msg_descs:
        yield m
        yield from walk_messages(m.nested_types)


def walk_enums(file_desc):
    yield from file_desc.enum_types_by_name.values()
    for m in walk_messages(file_desc.message_types_by_name.values()):
        yield from m.enum_types


def type_ref(f):
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return f.message_type.full_name
    if f.type == FieldDescriptor.TYPE_ENUM:
        return f.enum_type.full_name
    return None


def describe(f):
    ref = type_ref(f)
    oneof = f.containing_oneof.name if f.containing_oneof else None
    return (f"{f.name}={f.number} {LABEL_NAMES[f.label]} {TYPE_NAMES[f.type]}"
            + (f" <{ref}>" if ref else "") + (f" oneof:{oneof}" if oneof else ""))


def reachable_messages(service, method_names):
    """Full names of all messages reachable from the given RPCs."""
    seen = set()
    stack = []
    for name in method_names:
        m = service.methods_by_name.get(name)
        if m is None:
            continue
        stack += [m.input_type, m.output_type]
    while stack:
        d = stack.pop()
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        stack.extend(d.nested_types)
        for f in d.fields:
            if f.message_type is not None:
                stack.append(f.message_type)
    return seen


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR)
    ap.add_argument("-v", "--verbose", action="store_true", help="list every compared field")
    opts = ap.parse_args()

    ref_svc_mod, ref_cfg_mod = load_reference()
    ref_files = [ref_cfg_mod.DESCRIPTOR, ref_svc_mod.DESCRIPTOR]
    try:
        import tritonclient  # noqa: F401
        from importlib.metadata import version
        ref_version = version("tritonclient")
    except Exception:
        ref_version = "?"
    print(f"reference: tritonclient {ref_version} "
          f"({ref_svc_mod.__name__}, {ref_cfg_mod.__name__})")

    fds = compile_ours(opts.proto_dir)
    pool = descriptor_pool.DescriptorPool()  # private: same names as tritonclient's
    for fdp in fds.file:
        pool.Add(fdp)
    prefix = os.path.basename(os.path.abspath(opts.proto_dir))
    our_files = [pool.FindFileByName(f"{prefix}/{f}") for f in PROTO_FILES]

    mismatches = []
    info = []

    def mismatch(msg):
        mismatches.append(msg)

    # File-level properties.
    for ours, ref in zip(our_files, ref_files):
        if ours.package != PACKAGE:
            mismatch(f"{ours.name}: package is '{ours.package}', expected '{PACKAGE}'")
        ours_syntax = fds.file[[f.name for f in fds.file].index(ours.name)].syntax or "proto2"
        ref_fdp = descriptor_pb2.FileDescriptorProto()
        ref.CopyToProto(ref_fdp)
        ref_syntax = ref_fdp.syntax or "proto2"
        if ours_syntax != ref_syntax:
            mismatch(f"{ours.name}: syntax {ours_syntax}, reference has {ref_syntax}")

    ref_msgs = {m.full_name: m for f in ref_files
                for m in walk_messages(f.message_types_by_name.values())}
    our_msgs = {m.full_name: m for f in our_files
                for m in walk_messages(f.message_types_by_name.values())}
    ref_enums = {e.full_name: e for f in ref_files for e in walk_enums(f)}
    our_enums = {e.full_name: e for f in our_files for e in walk_enums(f)}

    # Service.
    ref_service = ref_svc_mod.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    try:
        our_service = pool.FindServiceByName(SERVICE)
    except KeyError:
        our_service = None
        mismatch(f"service {SERVICE} not found in our protos")

    methods_compared = 0
    if our_service is not None:
        for name in REQUIRED_RPCS:
            if name not in ref_service.methods_by_name:
                mismatch(f"rpc {name}: not present in reference (check REQUIRED_RPCS)")
            if name not in our_service.methods_by_name:
                mismatch(f"rpc {name}: required but missing from our service")
        for rm in ref_service.methods:
            om = our_service.methods_by_name.get(rm.name)
            if om is None:
                info.append(f"rpc {rm.name}: only in reference (not served by us)")
                continue
            methods_compared += 1
            for attr in ("client_streaming", "server_streaming"):
                if getattr(rm, attr) != getattr(om, attr):
                    mismatch(f"rpc {rm.name}: {attr} ours={getattr(om, attr)} "
                             f"ref={getattr(rm, attr)}")
            for attr in ("input_type", "output_type"):
                rn, on = getattr(rm, attr).full_name, getattr(om, attr).full_name
                if rn != on:
                    mismatch(f"rpc {rm.name}: {attr} ours={on} ref={rn}")
        for om in our_service.methods:
            if om.name not in ref_service.methods_by_name:
                info.append(f"rpc {om.name}: only in ours")

    # Messages needed by the required RPCs must all be present.
    required = reachable_messages(ref_service, REQUIRED_RPCS)
    for name in sorted(required):
        if name not in our_msgs:
            mismatch(f"message {name}: used by a required RPC but missing from ours")

    # Field-by-field comparison of shared messages.
    messages_compared = 0
    fields_compared = 0
    for name, rm in sorted(ref_msgs.items()):
        om = our_msgs.get(name)
        if om is None:
            if name not in required:
                info.append(f"message {name}: only in reference")
            continue
        messages_compared += 1
        if rm.GetOptions().map_entry != om.GetOptions().map_entry:
            mismatch(f"message {name}: map_entry ours={om.GetOptions().map_entry} "
                     f"ref={rm.GetOptions().map_entry}")
        for rf in rm.fields:
            of = om.fields_by_number.get(rf.number)
            if of is None:
                mismatch(f"{name}: field {describe(rf)} missing from ours")
                continue
            fields_compared += 1
            diffs = []
            if of.name != rf.name:
                diffs.append(f"name ours={of.name} ref={rf.name}")
            if of.type != rf.type:
                diffs.append(f"type ours={TYPE_NAMES[of.type]} ref={TYPE_NAMES[rf.type]}")
            if of.label != rf.label:
                diffs.append(f"label ours={LABEL_NAMES[of.label]} ref={LABEL_NAMES[rf.label]}")
            if type_ref(of) != type_ref(rf):
                diffs.append(f"type name ours={type_ref(of)} ref={type_ref(rf)}")
            r_oneof = rf.containing_oneof.name if rf.containing_oneof else None
            o_oneof = of.containing_oneof.name if of.containing_oneof else None
            if r_oneof != o_oneof:
                diffs.append(f"oneof ours={o_oneof} ref={r_oneof}")
            if diffs:
                mismatch(f"{name}.{rf.name} (#{rf.number}): " + "; ".join(diffs))
            elif opts.verbose:
                print(f"  ok  {name}: {describe(rf)}")
        for of in om.fields:
            if of.number not in rm.fields_by_number:
                info.append(f"{name}: field {describe(of)} only in ours (newer schema)")

    for name in sorted(set(our_msgs) - set(ref_msgs)):
        info.append(f"message {name}: only in ours (newer schema)")

    # Enums.
    enums_compared = 0
    enum_values_compared = 0
    for name, re_ in sorted(ref_enums.items()):
        oe = our_enums.get(name)
        if oe is None:
            info.append(f"enum {name}: only in reference")
            continue
        enums_compared += 1
        for rv in re_.values:
            ov = oe.values_by_name.get(rv.name)
            if ov is None:
                mismatch(f"enum {name}: value {rv.name}={rv.number} missing from ours")
                continue
            enum_values_compared += 1
            if ov.number != rv.number:
                mismatch(f"enum {name}: value {rv.name} ours={ov.number} ref={rv.number}")
        for ov in oe.values:
            if ov.name not in re_.values_by_name:
                info.append(f"enum {name}: value {ov.name}={ov.number} only in ours")
    for name in sorted(set(our_enums) - set(ref_enums)):
        info.append(f"enum {name}: only in ours")

    # Report.
    print()
    print(f"messages compared:    {messages_compared} "
          f"(reference has {len(ref_msgs)}, ours {len(our_msgs)}, "
          f"{len(required)} required by the served RPCs)")
    print(f"fields compared:      {fields_compared}")
    print(f"enums compared:       {enums_compared} ({enum_values_compared} values)")
    print(f"RPCs compared:        {methods_compared} (required {len(REQUIRED_RPCS)})")
    if info:
        print()
        print(f"informational ({len(info)}):")
        for line in info:
            print(f"  - {line}")
    print()
    if mismatches:
        print(f"MISMATCHES ({len(mismatches)}):")
        for line in mismatches:
            print(f"  ! {line}")
        return 1
    print("mismatches:           0 -- wire-compatible with tritonclient")
    return 0


if __name__ == "__main__":
    sys.exit(main())
