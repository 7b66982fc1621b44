#!/usr/bin/env bash
# Fine-tuning benchmark (part of `make bench`): 10,000 demonstration examples, three runs, the
# time to embed them (the inference service) and to train the head, from report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# The services run without TLS here (its cost is measured apart, by scripts/bench_tls.sh).
export MESH_PLAINTEXT=true
BIN=target/release
OUT=target/bench
mkdir -p "$OUT"
BENCH_TAG=bench-finetune
. scripts/bench_lib.sh
PORT=$(free_port)
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/onnxruntime/lib/libonnxruntime.so} \
    MODEL_REPOSITORY=$PWD/models INFERENCE_LISTEN=127.0.0.1:$PORT OTEL_EXPORTER_OTLP_ENDPOINT= \
    "$BIN/inference" >"$OUT/finetune-inference.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    .venv/bin/grpcurl -plaintext -max-time 1 "127.0.0.1:$PORT" grpc.health.v1.Health/Check 2>/dev/null \
        | grep -q '"SERVING"' && break
    sleep 0.2
done
for run in 1 2 3; do
    "$BIN/finetune" --demo-examples 10000 --parent 1 --inference "http://127.0.0.1:$PORT" \
        --no-export --report-dir "$OUT/finetune-$run" >/dev/null
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({"run": int(sys.argv[2]), "seconds": r["seconds"], "epochs": len(r["epochs"]), "validation_auc": r["validation"]["auc"], "parent_auc": r["parent_validation"]["auc"]}))' \
        "$OUT/finetune-$run/report.json" "$run"
done | tee "$OUT/finetune.jsonl"
