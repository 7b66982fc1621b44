"""A plain one-at-a-time gRPC model server: the baseline the served figures are compared with.

It is what a model is usually served with before a serving system exists: grpcio, one worker
thread, ONNX Runtime and Hugging Face tokenizers in Python, one request run at a time, no
batching. It speaks the Open Inference Protocol (through the stubs that tritonclient ships), so
the same load generator and perf_analyzer drive it and the inference service alike.

Usage: plain_server.py --port PORT --model-dir models/minilm-l6 [--threads 2] [--spin]
It serves ServerLive/ServerReady/ServerMetadata/ModelReady/ModelMetadata/ModelConfig/ModelInfer for the
model in --model-dir (input TEXT BYTES [batch, 1], output sentence_embedding FP32 [batch, 384]).
"""

import argparse
import struct
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

OUTPUT = "sentence_embedding"


def split_raw(raw: bytes) -> list[bytes]:
    """Splits raw BYTES contents (4-byte little-endian length before each element)."""
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


class PlainServer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Tokenize, run, reply: one request at a time."""

    def __init__(self, model_dir: str, threads: int, spin: bool) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Same setting as the inference service (its --spin flag), so that the comparison is
        # about serving, not about ONNX Runtime's thread spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(f"{model_dir}/1/model.onnx", options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(256)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.name = model_dir.rstrip("/").rsplit("/", 1)[-1]

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name == self.name)

    def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="plain", version="1", extensions=[])

    def ModelMetadata(self, request, context):
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=self.name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[tensor(name="TEXT", datatype="BYTES", shape=[-1, 1])],
            outputs=[tensor(name=OUTPUT, datatype="FP32", shape=[-1, 384])],
        )

    def ModelConfig(self, request, context):
        config = model_config_pb2.ModelConfig(
            name=self.name,
            platform="onnxruntime_onnx",
            max_batch_size=64,
            input=[model_config_pb2.ModelInput(name="TEXT", data_type=model_config_pb2.TYPE_STRING, dims=[1])],
            output=[model_config_pb2.ModelOutput(name=OUTPUT, data_type=model_config_pb2.TYPE_FP32, dims=[384])],
        )
        return service_pb2.ModelConfigResponse(config=config)

    def ModelInfer(self, request, context):
        if request.raw_input_contents:
            texts = split_raw(request.raw_input_contents[0])
        else:
            texts = list(request.inputs[0].contents.bytes_contents)
        encodings = self.tokenizer.encode_batch([t.decode() for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (embeddings,) = self.session.run(
            [OUTPUT], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )
        output = service_pb2.ModelInferResponse.InferOutputTensor(name=OUTPUT, datatype="FP32", shape=list(embeddings.shape))
        return service_pb2.ModelInferResponse(
            model_name=self.name,
            model_version="1",
            id=request.id,
            outputs=[output],
            raw_output_contents=[embeddings.astype("<f4").tobytes()],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="port to serve on (127.0.0.1)")
    parser.add_argument("--model-dir", required=True, help="model folder: <dir>/1/model.onnx and <dir>/tokenizer.json")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--spin", action="store_true", help="let ONNX Runtime threads spin (off, as in the inference service)")
    args = parser.parse_args()
    # One worker thread: requests are served strictly one at a time.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(PlainServer(args.model_dir, args.threads, args.spin), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"plain one-at-a-time server on 127.0.0.1:{args.port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
