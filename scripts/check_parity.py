#!/usr/bin/env python3
"""Check the built ONNX models against the sentence-transformers reference embeddings.

For models/minilm-l6 every fixture case is run on its own and all cases are
run together as one right-padded batch (pad id 0, attention mask 0 on the
padding); `sentence_embedding` must match the fixture within --tolerance in
both modes. For models/purchase-intent the check is structural: probabilities
have shape [n, 2], sum to 1 and equal softmax(logits), and padding does not
change them.

Sessions use the CPU provider at ORT_ENABLE_ALL, the setting the inference
service runs with, so the fused graph is what gets checked. Exits non-zero on
any failure. With --benchmark it also prints batch-32 throughput and batch-1
latency (informational only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURE = REPO_ROOT / "integration-tests" / "fixtures" / "minilm_l6_embeddings.json"
PAD_ID = 0
CLS_ID, SEP_ID = 101, 102


def make_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads  # 0 lets ORT pick.
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_single(ids: list[int]) -> dict[str, np.ndarray]:
    input_ids = np.array([ids], np.int64)
    return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids),
            "token_type_ids": np.zeros_like(input_ids)}


def feeds_batch(all_ids: list[list[int]]) -> dict[str, np.ndarray]:
    width = max(len(ids) for ids in all_ids)
    input_ids = np.full((len(all_ids), width), PAD_ID, np.int64)
    mask = np.zeros_like(input_ids)
    for row, ids in enumerate(all_ids):
        input_ids[row, :len(ids)] = ids
        mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}


def check_minilm(path: Path, cases: list[dict], tolerance: float) -> bool:
    session = make_session(path)
    expected = np.array([c["embedding"] for c in cases], np.float32)
    single = np.concatenate([session.run(["sentence_embedding"], feeds_single(c["input_ids"]))[0] for c in cases])
    batched = session.run(["sentence_embedding"], feeds_batch([c["input_ids"] for c in cases]))[0]

    ok = True
    print(f"{path}: sentence_embedding vs fixture (tolerance {tolerance:g})")
    for i, case in enumerate(cases):
        d_single = float(np.abs(single[i] - expected[i]).max())
        d_batch = float(np.abs(batched[i] - expected[i]).max())
        case_ok = d_single <= tolerance and d_batch <= tolerance
        ok &= case_ok
        print(f"  [{'ok' if case_ok else 'FAIL'}] single {d_single:.2e}  batched {d_batch:.2e}  "
              f"({len(case['input_ids'])} tokens) {case['text']!r}")
    print(f"  max abs diff: single {np.abs(single - expected).max():.2e}, "
          f"batched {np.abs(batched - expected).max():.2e}")
    return ok


def check_purchase_intent(path: Path, cases: list[dict]) -> bool:
    session = make_session(path)
    n = len(cases)
    probs, logits = session.run(["probabilities", "logits"], feeds_batch([c["input_ids"] for c in cases]))
    single = np.concatenate([session.run(["probabilities"], feeds_single(c["input_ids"]))[0] for c in cases])
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    checks = {
        "probabilities shape [n, 2]": probs.shape == (n, 2),
        "logits shape [n, 2]": logits.shape == (n, 2),
        "probabilities sum to 1": bool(np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)),
        "probabilities == softmax(logits)": bool(np.allclose(probs, softmax, atol=1e-6)),
        "batched == single": bool(np.allclose(probs, single, atol=1e-5)),
    }
    print(f"{path}: probabilities {probs.shape}, max |sum - 1| {np.abs(probs.sum(axis=1) - 1).max():.1e}")
    for name, passed in checks.items():
        print(f"  [{'ok' if passed else 'FAIL'}] {name}")
    return all(checks.values())


def benchmark(path: Path, threads: int) -> None:
    """Batch-32 x 32-token throughput and batch-1 latency on random (seeded) token ids."""
    session = make_session(path, threads)
    rng = np.random.default_rng(0)

    def feeds(batch: int, tokens: int) -> dict[str, np.ndarray]:
        ids = rng.integers(1000, 30000, (batch, tokens), dtype=np.int64)
        ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}

    def timed(feed: dict[str, np.ndarray], runs: int) -> np.ndarray:
        for _ in range(3):  # warm-up: first runs allocate and pick kernels.
            session.run(["sentence_embedding"], feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(["sentence_embedding"], feed)
            times.append(time.perf_counter() - start)
        return np.array(times)

    big = timed(feeds(32, 32), 20)
    print(f"{path}: intra_op_num_threads={threads}, ORT_ENABLE_ALL")
    print(f"  batch 32 x 32 tokens: {32 / np.median(big):.0f} sentences/s (median {np.median(big) * 1e3:.1f} ms)")
    for tokens in (16, 32):
        one = timed(feeds(1, tokens), 100)
        print(f"  batch 1 x {tokens} tokens: median {np.median(one) * 1e3:.2f} ms, "
              f"p90 {np.percentile(one, 90) * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models",
                        help="model repository written by build_model.py (default: <repo>/models)")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE,
                        help=f"reference embeddings JSON (default: {DEFAULT_FIXTURE})")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="max allowed abs difference per embedding component (default: 1e-5)")
    parser.add_argument("--benchmark", action="store_true",
                        help="also time minilm-l6 (informational, not a pass/fail check)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for --benchmark (default: 2)")
    args = parser.parse_args()

    cases = json.loads(args.fixture.read_text())["cases"]
    ok = check_minilm(args.models / "minilm-l6" / "1" / "model.onnx", cases, args.tolerance)
    ok &= check_purchase_intent(args.models / "purchase-intent" / "1" / "model.onnx", cases)
    if args.benchmark:
        benchmark(args.models / "minilm-l6" / "1" / "model.onnx", args.threads)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
