"""The Python API (embed_lm.load): same embeddings as `python -m embed_lm.encode`, numpy or torch out, single
strings, cosine similarity against a direct computation, and a light `import embed_lm`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import embed_lm
from embed_lm.encode import main as encode_cli
from conftest import SAMPLE

TASK = "Given a one-line summary of a Debian software package, retrieve the package's full description"


@pytest.fixture(scope="module")
def texts():
    """Queries and documents (some longer than the run's 64 tokens), interleaved: order must survive sorting."""
    rows = (SAMPLE / "test" / "queries.jsonl").read_text().splitlines()[:6]
    rows += (SAMPLE / "test" / "corpus.jsonl").read_text().splitlines()[:6]
    return [json.loads(r)["text"] for r in rows]


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def model(tiny_run):
    return embed_lm.load(tiny_run, device="cpu")


def test_queries_and_documents_equal_the_cli(model, tiny_run, texts, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", texts)
    encode_cli([f"run={tiny_run}", "--input", str(inp), "--output", str(tmp_path / "d.npy"), "--quiet"])
    encode_cli([f"run={tiny_run}", "--input", str(inp), "--output", str(tmp_path / "q.npy"), "--quiet",
                "--as", "query", "--task", TASK])
    docs = model.encode_documents(texts, batch_size=5, show_progress_bar=True)  # (N, D)
    queries = model.encode_queries(texts, task=TASK)
    assert isinstance(docs, np.ndarray) and docs.dtype == np.float32 and docs.shape == (len(texts), 128)
    np.testing.assert_allclose(docs, np.load(tmp_path / "d.npy"), atol=1e-5)
    np.testing.assert_allclose(queries, np.load(tmp_path / "q.npy"), atol=1e-5)
    np.testing.assert_allclose(model.encode(texts), docs, atol=1e-6)  # documents get no prefix


def test_tensors_single_strings_and_similarity(model, texts):
    q = model.encode_queries(texts[:3], task=TASK, convert_to_tensor=True)  # (3, D)
    d = model.encode_documents(texts[3:8], convert_to_tensor=True)  # (5, D)
    assert isinstance(q, torch.Tensor) and q.shape == (3, 128) and q.device.type == "cpu"
    one = model.encode_queries(texts[0], task=TASK)  # (D,)
    assert one.shape == (128,)
    np.testing.assert_allclose(one, q[0].numpy(), atol=1e-5)
    reference = np.array([[float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) for b in d.numpy()]
                          for a in q.numpy()])
    scores = model.similarity(q, d)
    assert isinstance(scores, torch.Tensor) and scores.shape == (3, 5)
    np.testing.assert_allclose(scores.numpy(), reference, atol=1e-5)
    np.testing.assert_allclose(model.similarity(q.numpy(), d.numpy()), reference, atol=1e-5)


def test_import_is_light():
    code = "import sys, embed_lm; assert 'torch' not in sys.modules, 'torch imported'; print(embed_lm.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
