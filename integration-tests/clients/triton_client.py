"""Drives a server with Triton's own Python client (tritonclient[grpc]), unchanged.

Usage: triton_client.py HOST:PORT FIXTURE.json [API_KEY]
With an API key (for the gateway), every call carries `authorization: Bearer API_KEY`.
Prints one JSON object: what the client saw (liveness, metadata, config, embeddings'
largest difference from the reference, statistics), for the calling test to assert on.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> None:
    url, fixture = sys.argv[1], sys.argv[2]
    headers = {"authorization": f"Bearer {sys.argv[3]}"} if len(sys.argv) > 3 else None
    cases = json.load(open(fixture))["cases"]
    client = grpcclient.InferenceServerClient(url=url)
    texts = np.array([[case["text"].encode()] for case in cases], dtype=np.object_)
    inputs = [grpcclient.InferInput("TEXT", list(texts.shape), "BYTES")]
    inputs[0].set_data_from_numpy(texts)
    outputs = [grpcclient.InferRequestedOutput("sentence_embedding")]
    result = client.infer("minilm-l6", inputs, outputs=outputs, request_id="triton-client-1", headers=headers)
    embeddings = result.as_numpy("sentence_embedding")
    reference = np.array([case["embedding"] for case in cases], dtype=np.float32)
    report = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready("minilm-l6", headers=headers),
        "metadata": client.get_model_metadata("minilm-l6", headers=headers, as_json=True),
        "config": client.get_model_config("minilm-l6", headers=headers, as_json=True)["config"],
        "response_id": result.get_response(as_json=True).get("id"),
        "shape": list(embeddings.shape),
        "max_abs_diff": float(np.abs(embeddings - reference).max()),
        "statistics": client.get_inference_statistics("minilm-l6", headers=headers, as_json=True),
        "index": client.get_model_repository_index(headers=headers, as_json=True),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
