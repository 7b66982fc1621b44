"""make demo-incident: a bad rollout, caught and undone by the mesh, followed live.

Against a mesh started by `make run`, this rolls out version 99 of minilm-l6 (a copy of
version 1) as a canary for half of the shoppers (`traffic --bad-canary 50`), then has a botched
deploy take version 99 off the inference replicas: the canary's calls fail. It follows the alert
manager through grpcurl: the CanaryVersionErrors incident opens, its diagnosis report is
written, the rule's remediation sets the canary's weight to 0, the errors stop, and the incident
resolves with its summary. Exits 0 when that whole story happened within --timeout seconds, 1 otherwise. The
canary split and version 99 are removed at the end either way.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tls_flags(args):
    """grpcurl's flags for the mesh's transport: the operator's certificate, or plaintext."""
    if args.plaintext:
        return ["-plaintext"]
    folder = args.tls_dir
    return ["-cacert", f"{folder}/ca.crt", "-cert", f"{folder}/tls.crt", "-key", f"{folder}/tls.key"]


def grpcurl(args, address, method, body=None, key=None):
    command = [args.grpcurl, *tls_flags(args), "-max-time", "5"]
    if key:
        command += ["-H", f"authorization: Bearer {key}"]
    if body is not None:
        command += ["-d", json.dumps(body)]
    command += [address, method]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{method}: {out.stderr.strip()}")
    return json.loads(out.stdout or "{}")


def load_versions(args, versions):
    """Has every inference replica serve exactly these versions of minilm-l6."""
    policy = json.dumps({"version_policy": {"specific": {"versions": versions}}})
    for address in args.inference.split(","):
        grpcurl(
            args,
            address.strip(),
            "inference.GRPCInferenceService/RepositoryModelLoad",
            {"model_name": "minilm-l6", "parameters": {"config": {"string_param": policy}}},
            key=args.admin_key,
        )


def incidents(args):
    body = {
        "labels": {"alertname": "CanaryVersionErrors", "model": "minilm-l6"},
        "page_size": 20,
    }
    return grpcurl(args, args.alert_manager, "monitoring.alerts.v1.AlertManager/ListIncidents", body).get(
        "incidents", []
    )


def say(started, message):
    print(f"[demo] +{time.monotonic() - started:5.1f}s  {message}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default="127.0.0.1:50051")
    parser.add_argument("--alert-manager", default="127.0.0.1:50054")
    parser.add_argument(
        "--inference",
        default=os.environ.get("DEMO_INFERENCE", "127.0.0.1:50052"),
        help="the inference replicas, comma-separated (MESH_REPLICAS=2: 127.0.0.1:50052,127.0.0.1:50062)",
    )
    parser.add_argument("--models", default=os.environ.get("MODEL_REPOSITORY", os.path.join(ROOT, "models")))
    parser.add_argument("--admin-key", default=os.environ.get("DEMO_ADMIN_KEY", "demo-admin-key"))
    parser.add_argument("--client-key", default=os.environ.get("DEMO_CLIENT_KEY", "demo-client-key"))
    parser.add_argument("--bin", default=os.environ.get("MESH_BIN", os.path.join(ROOT, "target", "release")))
    parser.add_argument("--grpcurl", default=os.path.join(ROOT, ".venv", "bin", "grpcurl"))
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds for the whole story (default 90)")
    parser.add_argument(
        "--tls-dir",
        default=os.path.join(ROOT, "data", "tls", "operator"),
        help="the operator's certificate, key and the mesh's CA (tls.crt, tls.key, ca.crt; made by `make run`)",
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        default=os.environ.get("MESH_PLAINTEXT", "").lower() in ("1", "true", "yes", "on"),
        help="talk to a mesh run with MESH_PLAINTEXT=true",
    )
    args = parser.parse_args()

    for name, address in (("gateway", args.gateway), ("alert manager", args.alert_manager)):
        try:
            grpcurl(args, address, "grpc.health.v1.Health/Check", {})
        except (RuntimeError, OSError) as err:
            print(f"[demo] the {name} does not answer on {address} ({err}): start the mesh with `make run`", file=sys.stderr)
            return 1
    known = {i["id"] for i in incidents(args)}
    started = time.monotonic()
    version_dir = os.path.join(args.models, "minilm-l6", "99")
    os.makedirs(version_dir, exist_ok=True)
    link = os.path.join(version_dir, "model.onnx")
    if not os.path.lexists(link):
        os.symlink(os.path.join("..", "1", "model.onnx"), link)
    load_versions(args, [1, 99])
    say(started, "rollout: version 99 of minilm-l6 loaded on the inference replicas")
    traffic = subprocess.Popen(
        [
            os.path.join(args.bin, "traffic"),
            "--gateway", f"{'http' if args.plaintext else 'https'}://{args.gateway}",
            *([] if args.plaintext else [
                "--tls-ca", f"{args.tls_dir}/ca.crt",
                "--tls-cert", f"{args.tls_dir}/tls.crt",
                "--tls-key", f"{args.tls_dir}/tls.key",
            ]),
            "--api-key", args.client_key,
            "--admin-key", args.admin_key,
            "--bad-canary", "50",
            "--rate", "10",
            "--duration", f"{int(args.timeout) + 10}s",
            "--report-every", "5",
        ],
        stdin=subprocess.DEVNULL,
    )
    split = False
    while time.monotonic() - started < 20 and not split:
        time.sleep(0.5)
        state = grpcurl(
            args, args.gateway, "ecommerce.gateway.v1.GatewayAdmin/GetCanary", {"model": "minilm-l6"}, key=args.admin_key
        )
        split = any(str(w.get("version")) == "99" for w in state.get("weights", []))
    if not split:
        say(started, "the canary split was not set")
    say(started, "canary: half of minilm-l6's shoppers go to version 99")
    time.sleep(2)
    load_versions(args, [1])
    say(started, "fault: a botched deploy takes version 99 off the replicas; the canary's calls fail")
    shown = set()
    seen_events = 0
    ok = False
    try:
        while time.monotonic() - started < args.timeout:
            time.sleep(1)
            fresh = [i for i in incidents(args) if i["id"] not in known]
            if not fresh:
                continue
            incident = fresh[-1]
            if "opened" not in shown:
                shown.add("opened")
                say(started, f"incident #{incident['id']} opened: {incident.get('title', '')}")
            full = grpcurl(
                args, args.alert_manager, "monitoring.alerts.v1.AlertManager/GetIncident", {"id": incident["id"]}
            )
            timeline = full.get("timeline", [])
            for event in timeline[seen_events:]:
                say(started, f"  {event.get('kind', ''):<15} {event.get('message', '')}")
            seen_events = len(timeline)
            if full.get("report") and "report" not in shown:
                shown.add("report")
                print("\n--- diagnosis report ---\n" + full["report"], flush=True)
            if full.get("state") == "INCIDENT_STATE_RESOLVED":
                kinds = {e.get("kind") for e in timeline}
                if full.get("summary"):
                    print("\n--- resolution summary ---\n" + full["summary"], flush=True)
                ok = "action_finished" in kinds and "diagnosed" in kinds
                say(started, "resolved" + ("" if ok else " (but without a diagnosis or a finished action)"))
                break
        else:
            say(started, f"the incident did not open and resolve within {args.timeout:.0f} s")
    finally:
        traffic.terminate()
        traffic.wait()
        try:
            grpcurl(
                args,
                args.gateway,
                "ecommerce.gateway.v1.GatewayAdmin/SetCanary",
                {"model": "minilm-l6", "weights": []},
                key=args.admin_key,
            )
        except RuntimeError as err:
            print(f"[demo] the canary split was not removed: {err}", file=sys.stderr)
        try:
            load_versions(args, [1])
        except RuntimeError as err:
            print(f"[demo] version 99 was not unloaded: {err}", file=sys.stderr)
        if os.path.islink(link):
            os.remove(link)
            os.rmdir(version_dir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
