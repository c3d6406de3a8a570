"""python -m embed_lm.encode end to end on a tiny run trained in-process (2 steps), plus its input errors."""

import json

import numpy as np
import pytest
import torch

from conftest import SAMPLE, compose_train
from embed_lm.inference.cli import parse_args, run_main
from embed_lm.data.records import DataFormatError
from embed_lm.encode import build_parser, count_texts, main
from embed_lm.inference.runs import load_run
from embed_lm.model.length_batching import length_slices
from embed_lm.train import train

TASK = "Given a one-line summary of a Debian software package, retrieve the package's full description"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(compose_train(["backbone=tiny_mistral", "data=sample", "debug=smoke", "logger=none", "trainer.max_steps=2",
                         "test_after_training=false"], out))
    return out


@pytest.fixture(scope="module")
def texts():
    """Short queries and documents longer than the run's max_length (64), interleaved: order must survive sorting."""
    queries = [json.loads(x)["text"] for x in (SAMPLE / "test" / "queries.jsonl").read_text().splitlines()[:12]]
    docs = [json.loads(x)["text"] for x in (SAMPLE / "test" / "corpus.jsonl").read_text().splitlines()[:12]]
    return [t for pair in zip(queries, docs) for t in pair]


@pytest.fixture(scope="module")
def embedder(run_dir):
    return load_run(run_dir)[0]  # LoRA kept separate: the CLI's merged weights must agree


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def encode(run_dir, inp, out, *extra):
    main([f"run={run_dir}", "--input", str(inp), "--output", str(out), "--quiet", "--batch-size", "4",
          "--chunk-size", "7", *extra])  # chunks of 7, batches of 4: rows must land in input order
    return np.load(out)


def test_documents_match_the_embedder_row_by_row(run_dir, embedder, texts, tmp_path):
    emb = encode(run_dir, write_jsonl(tmp_path / "in.jsonl", texts), tmp_path / "emb.npy")
    assert emb.dtype == np.float32 and emb.shape == (len(texts), 128)
    np.testing.assert_allclose(emb, embedder.encode(texts).numpy(), atol=1e-5)
    assert not (tmp_path / "emb.npy.partial").exists()


def test_queries_get_the_instruction_and_text_files_work(run_dir, embedder, texts, tmp_path):
    texts = [t.replace("\n", " ") for t in texts]  # one text per line
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    emb = encode(run_dir, tmp_path / "in.txt", tmp_path / "q.npy", "--as", "query", "--task", TASK)
    np.testing.assert_allclose(emb, embedder.encode_queries(texts, task=TASK).numpy(), atol=1e-5)
    assert np.abs(emb - embedder.encode(texts).numpy()).max() > 1e-3  # the instruction changed the embeddings


def test_windows_and_token_budget_do_not_change_embeddings(embedder, texts):
    ref = embedder.encode(texts, batch_size=64)  # (N, D)
    embedder.window_chars = 300  # several tokenization windows
    try:
        torch.testing.assert_close(embedder.encode(texts, batch_size=3), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(embedder.encode(texts, max_tokens=100), ref, atol=1e-5, rtol=0)
    finally:
        embedder.window_chars = 4_000_000


def test_token_budget_bounds_every_batch(embedder, texts):
    rows = embedder.collator.tokenize([""] * len(texts), texts)
    lengths = sorted((len(ids) for ids, _ in rows), reverse=True)
    parts = list(length_slices(lengths, max_tokens=130))
    assert all(lengths[p][0] * len(lengths[p]) <= 130 for p in parts if len(lengths[p]) > 1)
    assert sum(len(lengths[p]) for p in parts) == len(texts)


@pytest.mark.parametrize("content, where, problem", [
    ("", ":1:", "holds no texts"),
    ('{"text": "a"}\n{"text": "b"\n', ":2:", "invalid JSON"),
    ('{"text": "a"}\n{"title": "b"}\n', ":2: field 'text'", "missing"),
    ('{"text": "a"}\n{"text": 3}\n', ":2: field 'text'", "non-empty string"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, where, problem):
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    with pytest.raises(DataFormatError) as e:
        count_texts(path)
    assert f"{path}{where}" in str(e.value) and problem in str(e.value)


def test_blank_line_in_a_text_file_names_the_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("first\n\nthird\n")
    with pytest.raises(DataFormatError, match=rf"{path}:2: blank line"):
        count_texts(path)


def cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        run_main(lambda: main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    return err


def test_cli_errors_exit_2_without_traceback(run_dir, texts, tmp_path, capsys):
    good = write_jsonl(tmp_path / "in.jsonl", texts[:2])
    (tmp_path / "empty.jsonl").write_text("")
    err = cli_error(capsys, [f"run={run_dir}", "--input", str(tmp_path / "empty.jsonl"), "--output", "x.npy"])
    assert f"{tmp_path / 'empty.jsonl'}:1:" in err
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    err = cli_error(capsys, [f"run={run_dir}", "--input", str(tmp_path / "bad.jsonl"), "--output", "x.npy"])
    assert f"{tmp_path / 'bad.jsonl'}:2: invalid JSON" in err
    err = cli_error(capsys, [f"run={tmp_path}", "--input", str(good), "--output", str(tmp_path / "o.npy")])
    assert "adapter_config.json" in err and "python -m embed_lm.train" in err  # says what a run dir holds
    err = cli_error(capsys, [f"run={run_dir}", "--input", str(good), "--output", str(tmp_path / "o.npy"),
                             "--as", "query"])
    assert "needs --task" in err and TASK in err
    (tmp_path / "o.npy").write_bytes(b"")
    err = cli_error(capsys, [f"run={run_dir}", "--input", str(good), "--output", str(tmp_path / "o.npy")])
    assert "--force" in err


def test_key_value_arguments_read_as_flags():
    args = parse_args(build_parser(), ["run=r", "--input", "a.jsonl", "output=b.npy", "--task", "x=y", "batch_size=8"])
    assert (args.run, str(args.output), args.task, args.batch_size) == ("r", "b.npy", "x=y", 8)
