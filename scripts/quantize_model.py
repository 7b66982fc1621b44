#!/usr/bin/env python3
"""Quantize a model version to int8 and convert one to fp16, with ONNX Runtime's and ONNX's tools.

    int8   onnxruntime.quantization.quantize_dynamic: weights of every MatMul as per-channel
           signed 8-bit integers, activations quantized per run (no calibration set needed).
           A classifier's head (`classifier/MatMul`) stays fp32: it is 768 weights, and keeping
           it lets `finetune` rewrite the head of an int8 version in place as it does for fp32.
    fp16   onnxconverter_common.float16.convert_float_to_float16 with fp32 inputs and outputs,
           for the CUDA execution provider (`model.fp16.onnx` beside `model.onnx`).

An int8 version is a version of its own (`models/<model>/<N>/`), written only when the offline
gate (scripts/model_gate.py) accepts it against its parent; its `MODEL_CARD.md` and `card.json`
hold the gate's figures. Both conversions are deterministic: the same input file and tool
versions give byte-identical output (pinned by integration-tests/tests/model_build.rs).

Operators and `finetune --int8` run it as:

    .venv/bin/python scripts/quantize_model.py --model-dir models/purchase-intent --parent 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_gate  # noqa: E402  (the gate lives beside this script)

# Nodes left in fp32 by the int8 quantization: a classifier's head (see the module doc).
FP32_NODES = ["classifier/MatMul"]


def quantize_int8(fp32_path: Path) -> bytes:
    """The int8 (dynamic, per-channel QInt8) form of the model at `fp32_path`, as bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_path))
    present = {node.name for node in model.graph.node}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.onnx"
        quantize_dynamic(fp32_path, out, per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_exclude=[n for n in FP32_NODES if n in present])
        quantized = onnx.load(str(out))
    return quantized.SerializeToString(deterministic=True)


def convert_fp16(fp32_path: Path) -> bytes:
    """The fp16 form of the model at `fp32_path` (fp32 inputs and outputs kept), as bytes."""
    from onnx import TensorProto, helper
    from onnxconverter_common import float16

    model = onnx.load(str(fp32_path))
    # The converter types a graph output that nodes also read as fp32 for both (keep_io_types)
    # and leaves the graph ill-typed: such an output gets an Identity of its own first.
    outputs = {o.name for o in model.graph.output}
    read = {i for node in model.graph.node for i in node.input}
    for name in sorted(outputs & read):
        inner = f"{name}/inner"
        for node in model.graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        model.graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}/output"))
    casts = {node.name for node in model.graph.node if node.op_type == "Cast"}
    # keep_io_types: clients and the service keep exchanging fp32; casts sit at the edges.
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    # Nor does it retarget the graph's own Casts to float (the attention and pooling masks),
    # whose outputs it has typed fp16.
    for node in converted.graph.node:
        if node.name in casts:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.FLOAT16
    onnx.checker.check_model(converted)
    return converted.SerializeToString(deterministic=True)


def check_fp16(model_dir: Path, thresholds: dict, log=None) -> None:
    """The offline gate on `model_dir/1/model.fp16.onnx` against `model.onnx` (run on the CPU
    provider here: the figures are the conversion's, not the GPU's arithmetic)."""
    parent = model_dir / "1" / "model.onnx"
    figures = model_gate.evaluate(parent, model_dir / "1" / "model.fp16.onnx", model_dir / "tokenizer.json")
    failures = model_gate.verdict(figures, thresholds)
    if failures:
        raise GateRefused(model_dir.name, 1, figures, failures, form="fp16")
    (log or _to_stderr)(f"{model_dir.name} version 1: fp16 form accepted by the gate ({model_gate.summary(figures)})")


def write_atomic(path: Path, data: bytes) -> bool:
    """Write `data` to `path` atomically; return False if the file already had that content.

    Unchanged files are not rewritten so that their mtime stays put and a server watching the
    model directory does not reload for nothing.
    """
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def card_markdown(model: str, version: int, parent: int, size: int, digest: str,
                  figures: dict, thresholds: dict) -> str:
    """The int8 version's model card: what it is, how it was made, and the gate's figures."""
    import onnxruntime

    lines = [
        f"# {model}, version {version}: int8 of version {parent}",
        "",
        f"- Parent: version {parent} (fp32).",
        f"- Made by `onnxruntime.quantization.quantize_dynamic` (onnxruntime {onnxruntime.__version__}): "
        "MatMul weights as per-channel signed 8-bit integers, activations quantized per run. "
        f"Left in fp32: {', '.join(FP32_NODES)} where present.",
        f"- File: `model.onnx`, {size:,} bytes, sha256 `{digest}`.",
        "- Serve it as a canary next to its parent (README, \"Rolling out a model version as a canary\").",
        "",
    ]
    return "\n".join(lines) + "\n" + model_gate.card_section(figures, thresholds)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


class Written(NamedTuple):
    """An int8 version as written: its number, its model file's size and SHA-256, and whether
    any of its files changed."""

    version: int
    size: int
    sha256: str
    changed: bool


def make_int8_version(model_dir: Path, parent: int, version: int | None, thresholds: dict,
                      log=_to_stderr) -> Written:
    """Quantize `model_dir/<parent>` into `model_dir/<version>` if the gate accepts it.

    Returns what was written. Raises `GateRefused` with the figures when the
    candidate falls under a threshold; nothing is written then.
    """
    parent_file = model_dir / str(parent) / "model.onnx"
    if not parent_file.is_file():
        raise FileNotFoundError(f"{parent_file}: no such model file (is version {parent} built?)")
    if version is None:
        on_disk = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        version = max(on_disk) + 1
    data = quantize_int8(parent_file)
    tokenizer = model_dir / "tokenizer.json"
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model.onnx"
        candidate.write_bytes(data)
        figures = model_gate.evaluate(parent_file, candidate, tokenizer)
    failures = model_gate.verdict(figures, thresholds)
    if failures:
        raise GateRefused(model_dir.name, parent, figures, failures)
    digest = hashlib.sha256(data).hexdigest()
    out = model_dir / str(version)
    card = {
        "precision": "int8",
        "parent_version": parent,
        "quantization": {"tool": "onnxruntime.quantization.quantize_dynamic", "per_channel": True,
                         "weight_type": "QInt8", "fp32_nodes": FP32_NODES},
        "sha256": digest,
        "gate": {"figures": figures, "thresholds": thresholds},
    }
    changed = write_atomic(out / "model.onnx", data)
    changed |= write_atomic(out / "card.json", (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
    changed |= write_atomic(out / "MODEL_CARD.md", card_markdown(
        model_dir.name, version, parent, len(data), digest, figures, thresholds).encode())
    log(f"{model_dir.name} version {version}: int8 of version {parent} accepted by the gate "
        f"({model_gate.summary(figures)})")
    return Written(version, len(data), digest, changed)


class GateRefused(Exception):
    """The offline gate refused a candidate; the message holds every failing figure."""

    def __init__(self, model: str, parent: int, figures: dict, failures: list[str], form: str = "int8") -> None:
        super().__init__(f"{model}: the {form} candidate of version {parent} is refused by the offline gate: "
                         + "; ".join(failures))
        self.figures = figures
        self.failures = failures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Quantize version PARENT of a model to int8 (ONNX Runtime's quantize_dynamic, "
                    "per-channel QInt8) and write it as a new version, once the offline gate "
                    "(scripts/model_gate.py) accepts it against the parent on the held-out set. "
                    "Exit 1 with the figures when the gate refuses; nothing is written then.")
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="the model's folder in the repository, e.g. models/purchase-intent")
    parser.add_argument("--parent", type=int, required=True, help="the fp32 version to quantize")
    parser.add_argument("--version", type=int, default=None,
                        help="the version to write (default: the newest on disk plus one)")
    model_gate.add_threshold_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = make_int8_version(args.model_dir, args.parent, args.version,
                                    model_gate.thresholds_from_args(args))
    except GateRefused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(written.version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
