"""Triton Inference Server 2.51 (bundled by PyPI nvidia-pytriton 0.7.0) serving minilm-l6.

The model callable tokenizes with Hugging Face tokenizers and runs the same ONNX file with an
onnxruntime session (2 intra-op threads, as the other servers), behind Triton's dynamic batcher.
Triton's restricted endpoints are opened (TritonSecurityConfig(restricted_endpoints=[])) so that
perf_analyzer can read the model's metadata and config.

Usage: triton_server.py --grpc-port P --http-port P --metrics-port P --model-dir models/minilm-l6
       [--max-batch 64] [--queue-delay-us 0]
"""

import argparse

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
from tokenizers import Tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--queue-delay-us", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        f"{args.model_dir}/1/model.onnx", options, providers=["CPUExecutionProvider"]
    )
    tokenizer = Tokenizer.from_file(f"{args.model_dir}/tokenizer.json")
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding()

    @batch
    def infer(TEXT: np.ndarray) -> dict:  # noqa: N803 (the tensor's name)
        texts = [row[0].decode("utf-8") if isinstance(row[0], bytes) else str(row[0]) for row in TEXT]
        encoded = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        types = np.zeros_like(ids)
        (embedding,) = session.run(
            ["sentence_embedding"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
        )
        return {"sentence_embedding": embedding.astype(np.float32)}

    config = TritonConfig(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        allow_metrics=False,
    )
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        triton.bind(
            model_name="minilm-l6",
            infer_func=infer,
            inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="sentence_embedding", dtype=np.float32, shape=(384,))],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
