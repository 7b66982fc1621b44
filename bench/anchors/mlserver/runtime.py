"""A small MLServer runtime for minilm-l6: Hugging Face tokenizers and an onnxruntime session
(2 intra-op threads, as the other servers) over the same ONNX file. MLServer's adaptive
batching (model-settings.json: up to 64 requests, 1 ms) merges concurrent requests along the
batch dimension.

settings.json runs inference in the server process (parallel_workers 0): MLServer 1.7.1's
worker pool dies at start on this machine's Python 3.11 ("There is no current event loop in
thread 'MainThread'" in the worker's signal set-up), so the pool is not used."""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse
from tokenizers import Tokenizer


class MiniLM(MLModel):
    """Text in (TEXT, BYTES), sentence embedding out (sentence_embedding, FP32 [batch, 384])."""

    async def load(self) -> bool:
        model_dir = self.settings.parameters.uri
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            f"{model_dir}/1/model.onnx", options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
        self.tokenizer.enable_truncation(256)
        self.tokenizer.enable_padding()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        (embedding,) = self.session.run(
            ["sentence_embedding"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
        )
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("sentence_embedding", embedding.astype(np.float32))],
        )
