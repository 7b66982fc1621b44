#!/usr/bin/env python3
"""Offline accuracy gate: is a candidate model version (int8, fine-tuned) as good as its parent?

    model_gate.py --parent models/minilm-l6/1/model.onnx --candidate models/minilm-l6/2/model.onnx
    model_gate.py --parent P --candidate C --card models/purchase-intent/2/MODEL_CARD.md --json
    model_gate.py --self-test

Both ONNX files are run on the held-out set shipped in scripts/heldout/ (shoppers' queries,
product titles and messages written for it; see its README.md), tokenized as the inference
service does (the model's tokenizer.json, no padding, truncation at the config.toml's
max_sequence_length), in batches of up to 64 texts of similar length padded with id 0
(token_type_ids all 0), as the service's batcher forms them under load.

Embedding models (a `sentence_embedding` output):
  * cosine of the candidate's embedding with the parent's, over every held-out text: the
    minimum must reach --min-cosine; the mean is reported;
  * NDCG@10 of Rank over each query's 25 candidates, scored as the gateway's Rank scores them
    (dot product of the L2-normalised query and title embeddings, ties in the caller's order),
    against graded relevance 0-3 (gain 2^rel - 1): the candidate may lose at most
    --max-ndcg-drop.
Classifiers (a `probabilities` output; class 1 = purchase intent):
  * accuracy (argmax) and AUC of the class-1 probability against the messages' labels: the
    candidate may lose at most --max-accuracy-drop and --max-auc-drop; the share of messages
    on which candidate and parent predict the same class is reported;
  * the encoder's embedding cosine (min, mean) when both graphs compute a `sentence_embedding`
    tensor, reported only: a classifier is judged by its predictions.
Reported for both: the candidate's batch consistency, the lowest cosine between a text's
embedding computed alone and in its batch. It is 1.0 for float32 graphs (checked on every
8th text); dynamically quantized (int8) graphs scale activations by each batch's range, so
their vectors depend on the batch a text was served in (checked on every text).

A candidate under a threshold is refused, naming each failing figure with its value and
threshold. Exit status: 0 accepted, 1 refused, 2 usage or input error (unreadable model,
tokenizer or held-out file, parent and candidate of different kinds).

Importable (scripts/build_model.py and scripts/quantize_model.py run the gate in-process):
  evaluate(parent, candidate, tokenizer=None, kind="auto") -> figures, a JSON-ready dict that
      names the files by sha256 (no paths, no times: a card made from it is reproducible);
  verdict(figures, thresholds=None) -> failures, one line per failing figure (empty: accepted);
  card_section(figures, thresholds=None) -> the "## Offline gate" Markdown section;
  write_card(path, figures, thresholds=None) puts that section into a model card;
  summary(figures) -> a few readable lines;
  add_threshold_args(parser) and thresholds_from_args(args) -> dict: the threshold flags;
  Thresholds (defaults), GateError (unusable input).
Thresholds are a Thresholds or the dict thresholds_from_args returns; None means the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import re
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
HELDOUT_DIR = Path(__file__).resolve().parent / "heldout"
DEFAULT_MAX_TOKENS = 256  # the max_sequence_length that scripts/build_model.py writes
BATCH_SIZE = 64  # the models' max_batch_size
NDCG_AT = 10
# Figures are rounded so that float noise between CPUs (kernels differ by instruction set)
# does not change a model card; six places are far below any threshold's resolution.
FIGURE_DECIMALS = 6
# Operators of dynamically quantized graphs (onnxruntime.quantization.quantize_dynamic).
DYNAMIC_QUANTIZATION_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul",
                            "DynamicQuantizeLSTM", "QAttention"}
# Batch consistency runs every text alone for dynamically quantized graphs; float graphs are
# batch-invariant up to rounding, and every 8th text confirms it at an eighth of the cost.
CONSISTENCY_STRIDE_FLOAT = 8
EMBEDDING_OUTPUT = "sentence_embedding"
CLASSIFIER_OUTPUT = "probabilities"
KINDS = ("auto", "embedding", "classifier")
CARD_HEADING = "## Offline gate"


class GateError(Exception):
    """A usage or input problem: the gate cannot judge (exit status 2)."""


@dataclass(frozen=True)
class Thresholds:
    """What a candidate must reach to be accepted; the defaults are the issue's."""

    #: Lowest acceptable cosine between a text's candidate and parent embeddings.
    min_cosine: float = 0.98
    #: Largest acceptable loss of mean NDCG@10 of Rank.
    max_ndcg_drop: float = 0.02
    #: Largest acceptable loss of AUC (class-1 probability against the labels).
    max_auc_drop: float = 0.01
    #: Largest acceptable loss of accuracy. Looser than AUC: it counts only the messages that
    #: cross 0.5, and one of the 300 held-out messages moves it by 0.0033, so 0.02 is six
    #: messages net, beyond what int8 rounding flips on messages near the boundary.
    max_accuracy_drop: float = 0.02


@dataclass(frozen=True)
class HeldOut:
    """The held-out set: ranking queries with graded candidates, and labelled messages."""

    queries: list[str]
    candidates: list[list[str]]  # titles, per query, in the order they are sent to Rank
    relevance: list[np.ndarray]  # graded 0-3, per query, aligned with candidates
    messages: list[str]
    labels: np.ndarray  # 1 = purchase intent

    def search_texts(self) -> list[str]:
        """The distinct queries and product titles, in a fixed order: what an embedding model
        serves (Rank and Embed), and so what its cosine is judged on."""
        seen = dict.fromkeys(self.queries)
        for titles in self.candidates:
            seen.update(dict.fromkeys(titles))
        return list(seen)

    def texts(self) -> list[str]:
        """Every distinct text of the set, in a fixed order."""
        seen = dict.fromkeys(self.search_texts())
        seen.update(dict.fromkeys(self.messages))
        return list(seen)


def _read_jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise GateError(f"cannot read the held-out file {path}: {err.strerror}") from err
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise GateError(f"{path}:{number}: not JSON: {err.msg}") from err
    return rows


def load_heldout(folder: Path = HELDOUT_DIR) -> HeldOut:
    """Reads ranking.jsonl and messages.jsonl from `folder`."""
    ranking = _read_jsonl(folder / "ranking.jsonl")
    messages = _read_jsonl(folder / "messages.jsonl")
    try:
        heldout = HeldOut(
            queries=[row["query"] for row in ranking],
            candidates=[[c["title"] for c in row["candidates"]] for row in ranking],
            relevance=[np.array([c["relevance"] for c in row["candidates"]], np.float64) for row in ranking],
            messages=[row["text"] for row in messages],
            labels=np.array([row["label"] for row in messages], np.int64),
        )
    except (KeyError, TypeError) as err:
        raise GateError(f"malformed held-out set in {folder}: missing field {err}") from err
    if not heldout.queries or not heldout.messages or set(heldout.labels.tolist()) != {0, 1}:
        raise GateError(f"the held-out set in {folder} needs queries and messages of both labels")
    return heldout


# ---------------------------------------------------------------------------------------------
# Running a model as the inference service does
# ---------------------------------------------------------------------------------------------


def default_tokenizer(*models: Path) -> Path:
    """models/<model>/tokenizer.json for the first of `models` whose model folder has one."""
    tried = []
    for model in models:
        path = Path(model).resolve().parent.parent / "tokenizer.json"
        if path.is_file():
            return path
        tried.append(str(path))
    raise GateError(f"no tokenizer.json at {' or '.join(tried)}; pass --tokenizer")


class TextEncoder:
    """The inference service's tokenization (services/inference/src/tokenize.rs) in Python."""

    def __init__(self, tokenizer_path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as err:  # tokenizers raises plain Exception
            raise GateError(f"cannot load tokenizer {tokenizer_path}: {err}") from err
        self.max_tokens = _max_sequence_length(Path(tokenizer_path).parent / "config.toml")
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)
        self.path = Path(tokenizer_path)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]


def _max_sequence_length(config: Path) -> int:
    """The model's max_sequence_length from its config.toml, else the build's default."""
    if not config.is_file():
        return DEFAULT_MAX_TOKENS
    try:
        return int(tomllib.loads(config.read_text()).get("max_sequence_length", DEFAULT_MAX_TOKENS))
    except (tomllib.TOMLDecodeError, ValueError, OSError) as err:
        raise GateError(f"cannot read max_sequence_length from {config}: {err}") from err


class ModelRunner:
    """One ONNX Runtime session on the CPU, with the inference service's session settings."""

    def __init__(self, path: Path, threads: int, extra_outputs: tuple[str, ...] = ()) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise GateError(f"no model file at {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        source: str | bytes = str(self.path)
        self.op_types: set[str] = set()  # filled by _internal_tensors
        internal = self._internal_tensors(extra_outputs)
        if internal:
            source = _with_outputs(self.path, internal)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises several exception types on a bad file
            raise GateError(f"cannot load {self.path} with ONNX Runtime: {err}") from err
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        missing = {"input_ids", "attention_mask"} - self.inputs
        if missing:
            raise GateError(f"{self.path} has no {', '.join(sorted(missing))} input")

    def _internal_tensors(self, wanted: tuple[str, ...]) -> list[str]:
        """Of `wanted`, the tensors the graph computes but does not output (read with onnx)."""
        if not wanted:
            return []
        import onnx

        try:
            graph = onnx.load(str(self.path), load_external_data=False).graph
        except Exception as err:  # protobuf DecodeError and friends
            raise GateError(f"cannot read {self.path} as ONNX: {err}") from err
        self.op_types = {node.op_type for node in graph.node}
        outputs = {o.name for o in graph.output}
        produced = {name for node in graph.node for name in node.output}
        return [name for name in wanted if name in produced and name not in outputs]

    def run(self, ids: list[list[int]], outputs: list[str], batch_size: int = BATCH_SIZE) -> list[np.ndarray]:
        """`outputs` for every row of `ids`, in batches of up to `batch_size` rows of similar
        length padded with id 0, as the service's batcher forms them under load."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        results: list[np.ndarray] = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            seq_len = max(len(ids[i]) for i in rows)
            input_ids = np.zeros((len(rows), seq_len), np.int64)
            mask = np.zeros((len(rows), seq_len), np.int64)
            for r, i in enumerate(rows):
                input_ids[r, :len(ids[i])] = ids[i]
                mask[r, :len(ids[i])] = 1
            feed = {"input_ids": input_ids, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feed["token_type_ids"] = np.zeros_like(input_ids)
            for index, values in enumerate(self.session.run(outputs, feed)):
                if index == len(results):
                    results.append(np.empty((len(ids), *values.shape[1:]), values.dtype))
                results[index][rows] = values
        return results


def _with_outputs(path: Path, names: list[str]) -> bytes:
    """The model at `path` with the internal tensors `names` added as graph outputs."""
    import onnx

    model = onnx.load(str(path))
    for name in names:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    return model.SerializeToString()


def model_kind(runner: ModelRunner) -> str:
    """"classifier" with a probabilities output, else "embedding" with a sentence_embedding one."""
    if CLASSIFIER_OUTPUT in runner.outputs:
        return "classifier"
    if EMBEDDING_OUTPUT in runner.outputs:
        return "embedding"
    raise GateError(f"{runner.path} has neither a {CLASSIFIER_OUTPUT!r} nor a {EMBEDDING_OUTPUT!r} output "
                    f"(outputs: {', '.join(runner.outputs)})")


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def ndcg_at(scores: np.ndarray, relevance: np.ndarray, k: int = NDCG_AT) -> float:
    """NDCG@k of one ranking (gain 2^rel - 1, discount log2(rank + 1)); ties keep input order."""
    order = np.argsort(-scores, kind="stable")[:k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(np.sum((2.0 ** relevance[order] - 1.0) * discounts[:len(order)]))
    ideal = np.sort(relevance)[::-1][:k]
    idcg = float(np.sum((2.0 ** ideal - 1.0) * discounts[:len(ideal)]))
    return dcg / idcg if idcg > 0 else 0.0


def rank_ndcg(vectors: dict[str, np.ndarray], heldout: HeldOut) -> float:
    """Mean NDCG@10 over the queries, scored as the gateway's Rank does."""
    values = []
    for query, titles, relevance in zip(heldout.queries, heldout.candidates, heldout.relevance):
        q = vectors[query]
        # services/gateway/src/core.rs `cosine`: a float32 dot product of normalised vectors.
        scores = np.array([np.dot(q, vectors[t]) for t in titles], np.float32)
        values.append(ndcg_at(scores, relevance))
    return float(np.mean(values))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores count one half)."""
    scores = np.asarray(scores, np.float64)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    start = 0
    while start < len(scores):  # average ranks over runs of equal scores
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    positives = int(labels.sum())
    negatives = len(labels) - positives
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, in float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def _cosine_figures(parent: np.ndarray, candidate: np.ndarray, texts: list[str]) -> dict:
    values = cosines(parent, candidate)
    worst = int(np.argmin(values))
    return {"min": float(values.min()), "mean": float(values.mean()), "texts": len(texts),
            "worst_text": texts[worst]}


def _pair(parent: float, candidate: float) -> dict:
    return {"parent": parent, "candidate": candidate, "drop": parent - candidate}


def evaluate(parent: str | Path, candidate: str | Path, tokenizer: str | Path | None = None,
             kind: str = "auto", *, heldout: HeldOut | None = None, threads: int = 2) -> dict:
    """Runs parent and candidate on the held-out set and returns the figures (JSON-ready).

    The figures name the files by content (sha256), not by path, so that a model card built
    from them is the same on every machine and every run.

    `tokenizer` defaults to models/<model>/tokenizer.json next to the parent's (else the
    candidate's) version folder. `kind` is "embedding", "classifier" or "auto" (from the graph
    outputs; parent and candidate must agree). Raises GateError on unusable input.
    """
    if kind not in KINDS:
        raise GateError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    parent, candidate = Path(parent), Path(candidate)
    heldout = heldout or load_heldout()
    encoder = TextEncoder(Path(tokenizer) if tokenizer else default_tokenizer(parent, candidate))
    first = ModelRunner(parent, threads, (EMBEDDING_OUTPUT,))
    same = parent.resolve() == candidate.resolve()
    runners = [first, first if same else ModelRunner(candidate, threads, (EMBEDDING_OUTPUT,))]
    kinds = [model_kind(r) for r in runners]
    if kind == "auto":
        if kinds[0] != kinds[1]:
            raise GateError(f"the parent is of kind {kinds[0]} and the candidate of kind {kinds[1]}; "
                            "pass --kind to compare what they share")
        kind = kinds[0]
    wanted = CLASSIFIER_OUTPUT if kind == "classifier" else EMBEDDING_OUTPUT
    for runner in runners:
        if wanted not in runner.outputs:
            raise GateError(f"{runner.path} has no {wanted!r} output, which a {kind} model needs")

    # Contents, not paths: the same files give the same figures wherever they lie.
    figures: dict = {
        "kind": kind,
        "parent_sha256": _sha256(parent),
        "candidate_sha256": _sha256(candidate),
        "tokenizer_sha256": _sha256(encoder.path),
        "max_sequence_length": encoder.max_tokens,
    }
    # An embedding model is judged on the queries and titles it ranks; a classifier's shared
    # encoder is reported over every text, its messages included.
    texts = heldout.search_texts() if kind == "embedding" else heldout.texts()
    ids = encoder.encode(texts)
    has_embedding = all(EMBEDDING_OUTPUT in r.outputs for r in runners)
    outputs = ([EMBEDDING_OUTPUT] if has_embedding else []) + ([CLASSIFIER_OUTPUT] if kind == "classifier" else [])
    results = [dict(zip(outputs, runners[0].run(ids, outputs)))]
    results.append(results[0] if same else dict(zip(outputs, runners[1].run(ids, outputs))))
    if has_embedding:
        embeddings = [r[EMBEDDING_OUTPUT] for r in results]
        figures["cosine"] = _cosine_figures(embeddings[0], embeddings[1], texts)
        # Dynamic int8 quantization scales activations by each batch's range, so a text's
        # vector depends on the batch it was run in (see DYNAMIC_QUANTIZATION_OPS).
        quantized = bool(runners[1].op_types & DYNAMIC_QUANTIZATION_OPS)
        sample = list(range(0, len(texts), 1 if quantized else CONSISTENCY_STRIDE_FLOAT))
        (alone,) = runners[1].run([ids[i] for i in sample], [EMBEDDING_OUTPUT], batch_size=1)
        figures["batch_consistency"] = {"min": float(cosines(alone, embeddings[1][sample]).min()),
                                        "texts": len(sample), "dynamically_quantized": quantized}

    if kind == "embedding":
        ndcg = [rank_ndcg(dict(zip(texts, e)), heldout) for e in embeddings]
        figures["ndcg_at_10"] = _pair(*ndcg)
        figures["heldout"] = {"texts": len(texts), "queries": len(heldout.queries),
                              "candidates_per_query": round(float(np.mean([len(c) for c in heldout.candidates])), 1)}
    else:
        where = {text: i for i, text in enumerate(texts)}
        rows = [where[m] for m in heldout.messages]
        probabilities = [r[CLASSIFIER_OUTPUT][rows] for r in results]
        predicted = [np.argmax(p, axis=1) for p in probabilities]
        figures["accuracy"] = _pair(*(float(np.mean(p == heldout.labels)) for p in predicted))
        figures["auc"] = _pair(*(roc_auc(heldout.labels, p[:, 1]) for p in probabilities))
        figures["agreement"] = float(np.mean(predicted[0] == predicted[1]))
        figures["max_probability_change"] = float(np.max(np.abs(probabilities[0][:, 1] - probabilities[1][:, 1])))
        figures["heldout"] = {"messages": len(heldout.messages), "positives": int(heldout.labels.sum()),
                              "texts": len(texts)}
    return _rounded(figures)


def _rounded(value):
    """`value` with every float rounded to FIGURE_DECIMALS places (recursively)."""
    if isinstance(value, float):
        return round(value, FIGURE_DECIMALS)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def as_thresholds(thresholds: Thresholds | Mapping[str, float] | None) -> Thresholds:
    """`thresholds` as a Thresholds (also from the dict thresholds_from_args returns)."""
    if thresholds is None:
        return Thresholds()
    if isinstance(thresholds, Thresholds):
        return thresholds
    return Thresholds(**thresholds)


def add_threshold_args(parser: argparse.ArgumentParser) -> None:
    """Adds --min-cosine, --max-ndcg-drop, --max-auc-drop and --max-accuracy-drop to `parser`
    (for the tools that run the gate: build_model.py, quantize_model.py, this script)."""
    defaults = Thresholds()
    group = parser.add_argument_group("offline gate thresholds (scripts/model_gate.py)")
    group.add_argument("--min-cosine", type=float, default=defaults.min_cosine,
                       help="embedding models: lowest cosine of a text's candidate and parent embeddings "
                            "(default %(default)s)")
    group.add_argument("--max-ndcg-drop", type=float, default=defaults.max_ndcg_drop,
                       help="embedding models: largest loss of NDCG@10 of Rank (default %(default)s)")
    group.add_argument("--max-auc-drop", type=float, default=defaults.max_auc_drop,
                       help="classifiers: largest loss of AUC (default %(default)s)")
    group.add_argument("--max-accuracy-drop", type=float, default=defaults.max_accuracy_drop,
                       help="classifiers: largest loss of accuracy (default %(default)s: six of the 300 "
                            "held-out messages net; accuracy counts only the messages that cross 0.5, so "
                            "it is a coarser figure than AUC)")


def thresholds_from_args(args: argparse.Namespace) -> dict[str, float]:
    """The thresholds parsed by add_threshold_args' flags, as a JSON-ready dict (verdict,
    card_section and write_card take it as they take a Thresholds)."""
    return dataclasses.asdict(Thresholds(min_cosine=args.min_cosine, max_ndcg_drop=args.max_ndcg_drop,
                                         max_auc_drop=args.max_auc_drop,
                                         max_accuracy_drop=args.max_accuracy_drop))


def verdict(figures: dict, thresholds: Thresholds | Mapping[str, float] | None = None) -> list[str]:
    """The figures under their thresholds (default: Thresholds()), one readable line each;
    empty when accepted."""
    thresholds = as_thresholds(thresholds)
    failures = []
    if figures["kind"] == "embedding":
        cosine = figures["cosine"]["min"]
        if not cosine >= thresholds.min_cosine:
            failures.append(f"min cosine {cosine:.4f} < {thresholds.min_cosine} "
                            f"(worst text: {figures['cosine']['worst_text']!r})")
        ndcg = figures["ndcg_at_10"]
        if not ndcg["drop"] <= thresholds.max_ndcg_drop:
            failures.append(f"NDCG@10 drop {ndcg['drop']:.4f} > {thresholds.max_ndcg_drop} "
                            f"(parent {ndcg['parent']:.4f}, candidate {ndcg['candidate']:.4f})")
    else:
        for key, name, limit in (("auc", "AUC", thresholds.max_auc_drop),
                                 ("accuracy", "accuracy", thresholds.max_accuracy_drop)):
            pair = figures[key]
            if not pair["drop"] <= limit:
                failures.append(f"{name} drop {pair['drop']:.4f} > {limit} "
                                f"(parent {pair['parent']:.4f}, candidate {pair['candidate']:.4f})")
    return failures


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def card_section(figures: dict, thresholds: Thresholds | Mapping[str, float] | None = None) -> str:
    """The "## Offline gate" Markdown section for a model card (deterministic: no paths, no
    times)."""
    thresholds = as_thresholds(thresholds)
    failures = verdict(figures, thresholds)
    held = figures["heldout"]
    if figures["kind"] == "embedding":
        scope = (f"{held['texts']} texts; Rank over {held['queries']} queries × "
                 f"{held['candidates_per_query']:g} candidates")
    else:
        scope = f"{held['messages']} labelled messages, {held['positives']} with purchase intent"

    def mark(ok: bool) -> str:
        return "pass" if ok else "**fail**"

    rows = ["| figure | parent | candidate | threshold | result |", "|---|---|---|---|---|"]
    cosine = figures.get("cosine")
    if figures["kind"] == "embedding":
        rows.append(f"| embedding cosine, min | | {cosine['min']:.4f} | ≥ {thresholds.min_cosine} | "
                    f"{mark(cosine['min'] >= thresholds.min_cosine)} |")
        rows.append(f"| embedding cosine, mean | | {cosine['mean']:.4f} | | |")
        n = figures["ndcg_at_10"]
        rows.append(f"| NDCG@10 of Rank | {n['parent']:.4f} | {n['candidate']:.4f} | "
                    f"drop ≤ {thresholds.max_ndcg_drop} | {mark(n['drop'] <= thresholds.max_ndcg_drop)} "
                    f"(drop {n['drop']:+.4f}) |")
    else:
        for key, name, limit in (("auc", "AUC", thresholds.max_auc_drop),
                                 ("accuracy", "accuracy", thresholds.max_accuracy_drop)):
            pair = figures[key]
            rows.append(f"| {name} | {pair['parent']:.4f} | {pair['candidate']:.4f} | drop ≤ {limit} | "
                        f"{mark(pair['drop'] <= limit)} (drop {pair['drop']:+.4f}) |")
        rows.append(f"| predictions agreeing with the parent | | {figures['agreement']:.4f} | | |")
        if cosine:
            rows.append(f"| encoder embedding cosine, min / mean | | {cosine['min']:.4f} / "
                        f"{cosine['mean']:.4f} | (reported) | |")
    if "batch_consistency" in figures:
        consistency = figures["batch_consistency"]
        rows.append(f"| batch consistency (cosine, alone vs batched, {consistency['texts']} texts) | | "
                    f"{consistency['min']:.4f} | (reported) | |")
    outcome = "**Accepted.**" if not failures else "**Refused:** " + "; ".join(failures) + "."
    return "\n".join([
        CARD_HEADING,
        "",
        f"The candidate (sha256 `{figures['candidate_sha256'][:16]}`) against its parent (sha256 "
        f"`{figures['parent_sha256'][:16]}`), {figures['kind']} model, on the held-out set of "
        f"scripts/heldout ({scope}), by scripts/model_gate.py.",
        "",
        *rows,
        "",
        outcome,
        "",
    ])


def write_card(path: str | Path, figures: dict,
               thresholds: Thresholds | Mapping[str, float] | None = None) -> None:
    """Puts the gate's section into the Markdown model card at `path`.

    An existing "## Offline gate" section (up to the next heading of level 1 or 2) is replaced;
    otherwise the section is appended. A missing card is created with the section only.
    """
    path = Path(path)
    section = card_section(figures, thresholds)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as err:
        raise GateError(f"cannot read the model card {path}: {err.strerror}") from err
    pattern = re.compile(rf"^{re.escape(CARD_HEADING)}[ \t]*\n.*?(?=^#{{1,2}} |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise GateError(f"cannot write the model card {path}: {err.strerror}") from err


def summary(figures: dict) -> str:
    """The figures in a few readable lines."""
    lines = [f"{figures['kind']} model: candidate sha256 {figures['candidate_sha256'][:12]} against parent "
             f"sha256 {figures['parent_sha256'][:12]}"]
    cosine = figures.get("cosine")
    if cosine:
        what = "embedding" if figures["kind"] == "embedding" else "encoder embedding (reported)"
        lines.append(f"  {what} cosine over {cosine['texts']} texts: min {cosine['min']:.4f}, "
                     f"mean {cosine['mean']:.4f}")
    for key, name in (("ndcg_at_10", "NDCG@10 of Rank"), ("auc", "AUC"), ("accuracy", "accuracy")):
        if key in figures:
            pair = figures[key]
            lines.append(f"  {name}: parent {pair['parent']:.4f}, candidate {pair['candidate']:.4f} "
                         f"(drop {pair['drop']:+.4f})")
    if "agreement" in figures:
        lines.append(f"  predictions agreeing with the parent: {figures['agreement']:.4f}")
    if "batch_consistency" in figures:
        consistency = figures["batch_consistency"]
        lines.append(f"  candidate's batch consistency (cosine, alone vs batched, {consistency['texts']} texts): "
                     f"{consistency['min']:.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------------------------


def _perturbed(source: Path, target: Path, change) -> None:
    """Writes `source` with `change(initializers_by_name)` applied to its weights to `target`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    tensors = {t.name: t for t in model.graph.initializer}
    arrays = {name: numpy_helper.to_array(t) for name, t in tensors.items()}
    for name, value in change(arrays).items():
        tensors[name].CopyFrom(numpy_helper.from_array(value.astype(arrays[name].dtype), name))
    onnx.save(model, str(target))


def _main_captured(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) with its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def self_test(models: Path) -> int:
    """Checks the gate on the built models: a copy is accepted, a damaged version refused."""
    passed = failed = 0

    def check(ok: bool, what: str, detail: str = "") -> None:
        nonlocal passed, failed
        passed += ok
        failed += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {what}{'' if ok else ': ' + detail}")

    embedding = models / "minilm-l6" / "1" / "model.onnx"
    classifier = models / "purchase-intent" / "1" / "model.onnx"
    for path in (embedding, classifier):
        if not path.is_file():
            raise GateError(f"the self-test needs {path}: run `make model` (or pass --models DIR)")
    heldout = load_heldout()
    rng = np.random.default_rng(7)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="model_gate.") as tmp:
        tmp = Path(tmp)
        print(f"self-test: {embedding}")
        same = evaluate(embedding, embedding, heldout=heldout)
        check(same["cosine"]["min"] > 0.99999, "the parent against itself has cosine 1", str(same["cosine"]))
        check(same["ndcg_at_10"]["drop"] == 0.0, "and the same NDCG@10", str(same["ndcg_at_10"]))
        check(verdict(same) == [], "and is accepted", str(verdict(same)))
        check(0.5 < same["ndcg_at_10"]["parent"] < 1.0, "the held-out ranking is neither trivial nor random",
              f"NDCG@10 {same['ndcg_at_10']['parent']}")

        # Noise of half the weights' spread on one feed-forward layer of the encoder.
        damaged = tmp / "minilm-l6" / "2" / "model.onnx"
        damaged.parent.mkdir(parents=True)
        name = "encoder.layer.2.intermediate.dense.weight"
        _perturbed(embedding, damaged, lambda w: {
            name: w[name] + rng.normal(0.0, 0.5 * w[name].std(), w[name].shape)})
        worse = evaluate(embedding, damaged, tokenizer=default_tokenizer(embedding), heldout=heldout)
        failures = verdict(worse)
        check(any(f.startswith("min cosine") for f in failures), "a damaged encoder is refused for its cosine",
              f"figures {worse['cosine']}, failures {failures}")
        loose = verdict(worse, Thresholds(min_cosine=0.0, max_ndcg_drop=1.0))
        check(loose == [], "and accepted when the thresholds are loosened", str(loose))

        print(f"self-test: {classifier}")
        # The built head is a random placeholder; give the parent a head that separates the
        # held-out messages (the class means' difference), so that damage has something to lose.
        # minilm-l6 is the classifier's encoder (scripts/build_model.py), so its vectors do.
        tokenizer = default_tokenizer(classifier)
        (vectors,) = ModelRunner(embedding, 2).run(TextEncoder(tokenizer).encode(heldout.messages),
                                                   [EMBEDDING_OUTPUT])
        mean1 = vectors[heldout.labels == 1].mean(axis=0)
        mean0 = vectors[heldout.labels == 0].mean(axis=0)
        direction = (mean1 - mean0) * 40.0
        bias = -float(direction @ (mean1 + mean0) / 2.0)
        trained = tmp / "purchase-intent" / "2" / "model.onnx"
        trained.parent.mkdir(parents=True)
        _perturbed(classifier, trained, lambda w: {
            "classifier.weight": np.stack([np.zeros_like(direction), direction], axis=1),
            "classifier.bias": np.array([0.0, bias])})
        same = evaluate(trained, trained, tokenizer=tokenizer, heldout=heldout)
        check(same["auc"]["parent"] > 0.8, "a trained head separates the held-out messages",
              f"AUC {same['auc']['parent']}")
        check(same["agreement"] == 1.0 and verdict(same) == [], "and is accepted against itself",
              f"agreement {same['agreement']}, failures {verdict(same)}")
        check(same.get("cosine", {}).get("min", 0.0) > 0.99999, "with its encoder's cosine reported",
              str(same.get("cosine")))

        # Noise six times the head's own norm: AUC falls by about 0.14.
        damaged = tmp / "purchase-intent" / "3" / "model.onnx"
        damaged.parent.mkdir(parents=True)
        noise = np.random.default_rng(8).normal(0.0, 6.0 * np.linalg.norm(direction) / math.sqrt(direction.size),
                                                direction.shape)
        _perturbed(trained, damaged, lambda w: {
            "classifier.weight": w["classifier.weight"] + np.stack([np.zeros_like(noise), noise], axis=1)})

        print("self-test: command line and model card")
        card = tmp / "MODEL_CARD.md"
        card.write_text("# purchase-intent version 3\n\n## Data\n\nsome.\n\n## Offline gate\n\nold figures\n")
        code, out, err = _main_captured(["--parent", str(trained), "--candidate", str(damaged),
                                         "--tokenizer", str(tokenizer), "--card", str(card), "--json"])
        worse = json.loads(out) if out.strip().startswith("{") else {}
        failures = worse.get("failures", [])
        check(code == 1 and any(f.startswith("AUC drop") for f in failures),
              "a damaged head is refused for its AUC, exit status 1", f"exit {code}, {worse.get('auc')}, {err}")
        check("AUC drop" in err, "and the refusal names the figure on stderr", err)
        text = card.read_text()
        check(text.count(CARD_HEADING) == 1 and "**Refused:** AUC drop" in text and "old figures" not in text
              and "## Data\n\nsome." in text, "the card's gate section is replaced, the rest kept", text)
        if worse:
            swapped = {**worse, "auc": _pair(worse["auc"]["candidate"], worse["auc"]["parent"]),
                       "accuracy": _pair(worse["accuracy"]["candidate"], worse["accuracy"]["parent"])}
            check(verdict(swapped) == [], "a gain is no drop", str(verdict(swapped)))
        code, _, err = _main_captured(["--parent", str(tmp / "missing.onnx"), "--candidate", str(trained),
                                       "--tokenizer", str(tokenizer)])
        check(code == 2 and "missing.onnx" in err, "a missing model exits 2 and names it", f"exit {code}, {err}")
        code, _, err = _main_captured(["--parent", str(trained)])
        check(code == 2 and "--candidate" in err, "a missing argument exits 2", f"exit {code}, {err}")
    print(f"self-test: {passed} passed, {failed} failed ({time.monotonic() - started:.1f} s)")
    return 0 if failed == 0 else 1


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="model_gate.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parent", type=Path, help="the parent version's model.onnx")
    parser.add_argument("--candidate", type=Path, help="the candidate version's model.onnx")
    parser.add_argument("--tokenizer", type=Path,
                        help="tokenizer.json (default: models/<model>/tokenizer.json, two folders up from "
                             "--parent, else from --candidate); max_sequence_length is read from the "
                             "config.toml beside it (256 without one)")
    parser.add_argument("--kind", choices=KINDS, default="auto",
                        help="what the models are (default auto: classifier with a 'probabilities' "
                             "output, else embedding with a 'sentence_embedding' output; --kind embedding "
                             "on classifiers judges their encoders)")
    parser.add_argument("--card", type=Path,
                        help="Markdown model card to put the figures into (its '## Offline gate' section is "
                             "replaced or appended; the file is created if missing); written whether the "
                             "candidate is accepted or refused")
    parser.add_argument("--json", action="store_true",
                        help="print the figures, thresholds and verdict as one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors and refusals")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--self-test", action="store_true",
                        help="check the gate on the built models (a copy is accepted, a damaged version "
                             "refused) and exit")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models",
                        help="model repository for --self-test (default: <repo>/models)")
    add_threshold_args(parser)
    args = parser.parse_args(argv)
    if not args.self_test and (args.parent is None or args.candidate is None):
        parser.error("--parent and --candidate are required (or --self-test)")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exit_:  # argparse: usage errors exit 2, --help exits 0
        return int(exit_.code or 0)
    try:
        if args.self_test:
            return self_test(args.models)
        thresholds = thresholds_from_args(args)
        started = time.monotonic()
        figures = evaluate(args.parent, args.candidate, args.tokenizer, args.kind, threads=args.threads)
        seconds = time.monotonic() - started
        failures = verdict(figures, thresholds)
        if args.card:
            write_card(args.card, figures, thresholds)
    except GateError as err:
        print(f"model_gate: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"parent": str(args.parent), "candidate": str(args.candidate), **figures,
                          "thresholds": thresholds, "accepted": not failures, "failures": failures,
                          "seconds": round(seconds, 2)}, indent=2))
    elif not args.quiet:
        print(f"parent:    {args.parent}\ncandidate: {args.candidate}")
        print(f"{summary(figures)}\n  ({seconds:.1f} s)")
    if failures:
        print(f"model_gate: refused {args.candidate}:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    if not args.quiet and not args.json:
        print(f"model_gate: accepted {args.candidate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
