#!/usr/bin/env bash
# The cost of TLS between the services (part of `make bench`; see BENCHMARKS.md): two meshes of
# a gateway in front of an inference service, one plaintext and one over TLS (the client to the
# gateway, and the gateway to the replica, mutual), both up at once.
#
#   c=1:  every loadgen worker alternates its requests between the two gateways (the plaintext
#         one, then the TLS one), so the machine's drift cancels; three runs with the model
#         (ModelInfer) and one without (ModelMetadata: the hops alone). Added p50, median of 3.
#   c=64: throughput of each gateway in turn, four rounds (plain then TLS, TLS then plain, ...); the
#         ratio of the medians; and four rounds of ModelMetadata (the hops alone).
#
# Each mesh has its own inference process: with the model, the two processes' own speeds
# differ by about as much as TLS costs, so the figures without a model run are the closer
# measure of TLS itself.
#
# Raw results go to target/bench/tls-*. BENCH_SECS (8) measured seconds of each run.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release
OUT=target/bench
MODEL=minilm-l6
SECS=${BENCH_SECS:-8}
WARMUP=2
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/onnxruntime/lib/libonnxruntime.so}
unset MESH_PLAINTEXT TLS_CERT_FILE TLS_KEY_FILE TLS_CA_FILE
export OTEL_EXPORTER_OTLP_ENDPOINT=
BENCH_TAG=bench-tls
. scripts/bench_lib.sh

for bin in inference gateway loadgen mesh-certs; do
    [ -x "$BIN/$bin" ] || die "$BIN/$bin is missing: run \`cargo build --release --workspace --bins\`"
done
mkdir -p "$OUT"
CERTS=$OUT/tls-certs
rm -rf "$CERTS"
"$BIN/mesh-certs" --out "$CERTS" >/dev/null
tls_of() { echo "--tls-cert $CERTS/$1/tls.crt --tls-key $CERTS/$1/tls.key --tls-ca $CERTS/$1/ca.crt"; }

pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

# Serving, asked with grpcurl over the given transport flags.
serving() {
    local addr=$1; shift
    .venv/bin/grpcurl "$@" -max-time 2 "$addr" grpc.health.v1.Health/Check | grep -q '"SERVING"'
}
operator=(-cacert "$CERTS/operator/ca.crt" -cert "$CERTS/operator/tls.crt" -key "$CERTS/operator/tls.key")

plain_inf=127.0.0.1:$(free_port)
tls_inf=127.0.0.1:$(free_port)
plain_gw=127.0.0.1:$(free_port)
tls_gw=127.0.0.1:$(free_port)
say "starting a plaintext and a TLS inference service"
# shellcheck disable=SC2046
"$BIN/inference" --listen "$plain_inf" --model-repository models --models "$MODEL" --plaintext \
    </dev/null >"$OUT/tls-inference-plain.log" 2>&1 &
pids+=($!); wait_until "plaintext inference" "$!" "$OUT/tls-inference-plain.log" 60 serving "$plain_inf" -plaintext
# shellcheck disable=SC2046
"$BIN/inference" --listen "$tls_inf" --model-repository models --models "$MODEL" $(tls_of inference) \
    </dev/null >"$OUT/tls-inference-tls.log" 2>&1 &
pids+=($!); wait_until "TLS inference" "$!" "$OUT/tls-inference-tls.log" 60 serving "$tls_inf" "${operator[@]}"
gateway_flags=(--api-keys bench-key:bench:client --rate-limit 1000000 --rate-burst 1000000)
"$BIN/gateway" --listen "$plain_gw" --inference "$plain_inf" "${gateway_flags[@]}" --plaintext \
    </dev/null >"$OUT/tls-gateway-plain.log" 2>&1 &
pids+=($!); wait_until "plaintext gateway" "$!" "$OUT/tls-gateway-plain.log" 60 serving "$plain_gw" -plaintext
# shellcheck disable=SC2046
"$BIN/gateway" --listen "$tls_gw" --inference "$tls_inf" "${gateway_flags[@]}" $(tls_of gateway) \
    </dev/null >"$OUT/tls-gateway-tls.log" 2>&1 &
pids+=($!); wait_until "TLS gateway" "$!" "$OUT/tls-gateway-tls.log" 60 serving "$tls_gw" "${operator[@]}"

# The load generator trusts the mesh's CA and shows no certificate, as a recommender service.
run() {
    local name=$1 secs=$2; shift 2
    say "loadgen $name ($((secs + WARMUP)) s)"
    "$BIN/loadgen" --duration-secs "$secs" --warmup-secs "$WARMUP" --texts-per-request 1 \
        --api-key bench-key --tls-ca "$CERTS/operator/ca.crt" "$@" >"$OUT/tls-$name.json" 2>>"$OUT/tls-loadgen.log" \
        || die "loadgen $name: see $OUT/tls-loadgen.log"
}
for i in 1 2 3; do
    run "c1-$i" "$SECS" --addr "http://$plain_gw" --versus "https://$tls_gw" --api oip --concurrency 1
done
run c1-metadata 5 --addr "http://$plain_gw" --versus "https://$tls_gw" --api metadata --concurrency 1
# Each round swaps which gateway goes first, so that neither always runs on a machine just
# warmed (or just tired) by the other.
for i in 1 2 3 4; do
    if [ $((i % 2)) = 1 ]; then
        run "c64-plain-$i" "$SECS" --addr "http://$plain_gw" --api oip --concurrency 64
        run "c64-tls-$i" "$SECS" --addr "https://$tls_gw" --api oip --concurrency 64
    else
        run "c64-tls-$i" "$SECS" --addr "https://$tls_gw" --api oip --concurrency 64
        run "c64-plain-$i" "$SECS" --addr "http://$plain_gw" --api oip --concurrency 64
    fi
done
# Without a model run the hops are all the work: the harshest test of TLS's share.
for i in 1 2 3 4; do
    if [ $((i % 2)) = 1 ]; then
        run "c64-meta-plain-$i" 5 --addr "http://$plain_gw" --api metadata --concurrency 64
        run "c64-meta-tls-$i" 5 --addr "https://$tls_gw" --api metadata --concurrency 64
    else
        run "c64-meta-tls-$i" 5 --addr "https://$tls_gw" --api metadata --concurrency 64
        run "c64-meta-plain-$i" 5 --addr "http://$plain_gw" --api metadata --concurrency 64
    fi
done

python3 - "$OUT" <<'PY' | tee "$OUT/tls-summary.txt"
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
load = lambda name: json.loads((out / f"tls-{name}.json").read_text())
c1 = [load(f"c1-{i}") for i in (1, 2, 3)]
meta = load("c1-metadata")
plain = [load(f"c64-plain-{i}")["requests_per_sec"] for i in (1, 2, 3, 4)]
tls = [load(f"c64-tls-{i}")["requests_per_sec"] for i in (1, 2, 3, 4)]
meta_plain = [load(f"c64-meta-plain-{i}")["requests_per_sec"] for i in (1, 2, 3, 4)]
meta_tls = [load(f"c64-meta-tls-{i}")["requests_per_sec"] for i in (1, 2, 3, 4)]
errors = sum(r["errors"] + r.get("versus", {}).get("errors", 0) for r in c1 + [meta])
errors += sum(load(f"c64-{k}-{i}")["errors"] for k in ("plain", "tls") for i in (1, 2, 3, 4))
errors += sum(load(f"c64-meta-{k}-{i}")["errors"] for k in ("plain", "tls") for i in (1, 2, 3, 4))
meta_ratio = statistics.median(meta_tls) / statistics.median(meta_plain)
added = statistics.median(r["added_ms"]["p50"] for r in c1)
ratio = statistics.median(tls) / statistics.median(plain)
verdict = lambda ok: "met" if ok else "MISSED"
print("TLS between the services (client -> gateway, gateway -> inference mutual), same run:")
print("  c=1, requests alternating plaintext / TLS gateway, added p50 (median of 3): %+.3f ms  (goal <= 0.05 ms: %s)"
      % (added, verdict(added <= 0.05)))
print("    (two inference processes: their own difference is in this figure; see ModelMetadata below)")
for r in c1:
    print("    plaintext p50 %.3f ms, TLS p50 %.3f ms: added p50 %+.3f, p99 %+.3f ms"
          % (r["latency"]["p50_ms"], r["versus"]["latency"]["p50_ms"], r["added_ms"]["p50"], r["added_ms"]["p99"]))
print("    without a model run (ModelMetadata): plaintext p50 %.3f ms, TLS %.3f ms: added %+.3f ms"
      % (meta["latency"]["p50_ms"], meta["versus"]["latency"]["p50_ms"], meta["added_ms"]["p50"]))
print("  c=64 throughput, rounds alternating: plaintext %s req/s, TLS %s req/s" %
      (", ".join("%.1f" % x for x in plain), ", ".join("%.1f" % x for x in tls)))
print("    TLS / plaintext (medians): %.3f, a change of %+.1f%%  (goal >= -3%%: %s)"
      % (ratio, 100 * (ratio - 1), verdict(ratio >= 0.97)))
print("  c=64 without a model run (ModelMetadata): plaintext %s req/s, TLS %s req/s" %
      (", ".join("%.0f" % x for x in meta_plain), ", ".join("%.0f" % x for x in meta_tls)))
print("    TLS / plaintext (medians): %.3f, a change of %+.1f%%" % (meta_ratio, 100 * (meta_ratio - 1)))
print("  errors: %d" % errors)
sys.exit(1 if errors else 0)
PY
