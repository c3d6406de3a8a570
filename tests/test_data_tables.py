"""The Arrow data layer: cached tables equal the plain readers, one build per content, per-kind synthetic sources,
no example twice in a batch, cheap pickling into DataLoader workers, refused bad options."""

import json
import pickle

import pytest

from conftest import SAMPLE
from embed_lm.data.datamodule import ContrastiveDataModule, MixtureDataset
from embed_lm.data.msmarco import MsMarcoSource
from embed_lm.data.sampler import MixtureBatchSampler
from embed_lm.data.synthetic import SyntheticSource
from embed_lm.data.tables import ensure_built

KINDS = {"short_long": ("user_query", "positive_document", "hard_negative_document"), "sts": ("S1", "S2", "S3"),
         "short_short": ("input", "positive_document", None), "long_short": ("input_text", "label", "misleading_label")}


def synthetic_dir(tmp_path, per_kind=40):
    for kind, (q, p, n) in KINDS.items():
        rows = [{"task": f"task {kind}", q: f"{kind} query {i}", p: f"{kind} doc {i}", **({n: f"{kind} neg {i}"}
                                                                                          if n else {})}
                for i in range(per_kind)]
        (tmp_path / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "*.jsonl")


def datamodule(sources, tmp_path, **kw):
    return ContrastiveDataModule("t", sources, collator=None, instruction_style=None, cache_dir=str(tmp_path / "c"),
                                 **kw)


def test_table_examples_equal_the_plain_readers(tmp_path):
    marco = MsMarcoSource("m", collection=str(SAMPLE / "train/msmarco/collection.tsv"),
                          queries=str(SAMPLE / "train/msmarco/queries.train.tsv"),
                          triples=str(SAMPLE / "train/msmarco/triples.train.ids.tsv"), max_examples=300)
    synth = SyntheticSource("s", synthetic_dir(tmp_path))
    for source in (marco, synth):
        table = source.open(ensure_built(source, tmp_path / "c"))
        assert [table.example(i) for i in range(len(table))] == source.load()
    assert len(marco.load()) == 300


def test_one_build_per_content(tmp_path, monkeypatch):
    source = SyntheticSource("s", synthetic_dir(tmp_path))
    first = ensure_built(source, tmp_path / "c")
    monkeypatch.setattr(source, "build", lambda out: pytest.fail("rebuilt an unchanged source"))
    assert ensure_built(source, tmp_path / "c") == first
    monkeypatch.undo()
    with (tmp_path / "sts.jsonl").open("a") as f:
        f.write(json.dumps({"task": "t", "S1": "new", "S2": "row", "S3": "neg"}) + "\n")
    second = ensure_built(source, tmp_path / "c")
    assert second != first and len(source.open(second)) == len(source.open(first)) + 1


def test_each_synthetic_kind_is_its_own_source_with_configurable_ratios(tmp_path):
    dm = datamodule({"synthetic": SyntheticSource("synthetic", synthetic_dir(tmp_path),
                                                  kind_ratios={"short-long": 3, "sts": 1, "short-short": 0,
                                                               "long-short": 0})}, tmp_path, batch_size=8)
    dm.setup("fit")
    parts = {p.name: p for p in dm.dataset.parts}
    assert set(parts) == {f"synthetic/{k}" for k in ("short-long", "sts", "short-short", "long-short")}
    assert parts["synthetic/short-long"].ratio == pytest.approx(3 * parts["synthetic/sts"].ratio)
    kinds_seen = set()
    for batch in dm.train_dataloader().batch_sampler:
        kinds = {dm.dataset[i].task_kind for i in batch}
        assert len(kinds) == 1
        kinds_seen |= kinds
    assert kinds_seen == {"short-long", "sts"}  # ratio 0 leaves a kind out
    with pytest.raises(ValueError, match="kind_ratios has no weight for"):
        datamodule({"s": SyntheticSource("s", synthetic_dir(tmp_path), kind_ratios={"sts": 1})}, tmp_path).setup()


def test_missing_negatives_are_other_positives_of_the_same_kind(tmp_path):
    source = SyntheticSource("s", synthetic_dir(tmp_path, per_kind=5))
    dm = datamodule({"s": source}, tmp_path, negatives_per_query=2)
    dm.setup("fit")
    positives = {}
    for e in source.load():
        positives.setdefault(e.task_kind, []).append(e.positive)
    for i in range(len(dm.dataset)):
        e = dm.dataset[i]
        assert len(e.negatives) == 2 and e.positive not in e.negatives
        filled = e.negatives[0 if e.task_kind == "short-short" else 1:]  # the others have one of their own
        assert set(filled) <= set(positives[e.task_kind])
    assert [dm.dataset[i] for i in range(len(dm.dataset))] == [dm.dataset[i] for i in range(len(dm.dataset))]


def test_a_batch_never_holds_an_example_twice():
    """Source 0 (10 examples) is drawn for half of 11 batches of 8: its passes end mid-batch; mixed batches draw
    about 4 of 8 from a source of 3."""
    for sizes, single in (([10, 100], True), ([3, 9], False)):
        sampler = MixtureBatchSampler(sizes, [1, 1], 8, single, seed=0)
        for epoch in range(10):
            sampler.set_epoch(epoch)
            for batch in sampler:
                assert len(set(batch)) == len(batch) == 8


def test_a_source_smaller_than_the_batch_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'synthetic/long-short' has 40 examples, fewer than one global batch of 64 "
                                         r"\(data.batch_size=64"):
        dm = datamodule({"synthetic": SyntheticSource("synthetic", synthetic_dir(tmp_path))}, tmp_path,
                        batch_size=64)
        dm.setup("fit")
        dm.train_dataloader()


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_negatives_per_query_must_be_a_count(tmp_path, bad):
    with pytest.raises(ValueError, match=r"data.negatives_per_query must be an integer >= 0"):
        datamodule({"s": SyntheticSource("s", synthetic_dir(tmp_path))}, tmp_path, negatives_per_query=bad)


def test_the_dataset_pickles_by_path_not_by_content(tmp_path):
    rows = [{"task": "t", "user_query": f"q{i}", "positive_document": "long text " * 50 + str(i),
             "hard_negative_document": f"n{i}"} for i in range(500)]
    (tmp_path / "short_long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = datamodule({"s": SyntheticSource("s", str(tmp_path / "*.jsonl"))}, tmp_path)
    dm.setup("fit")
    assert isinstance(dm.dataset, MixtureDataset)
    text_bytes = sum(len(r["positive_document"]) for r in rows)
    assert len(pickle.dumps(dm.dataset)) < text_bytes / 10  # what a DataLoader worker receives
    assert pickle.loads(pickle.dumps(dm.dataset))[7] == dm.dataset[7]


def test_pretokenised_batches_equal_the_tokenised_ones(tmp_path, tiny_mistral):
    from embed_lm.data.datamodule import PairCollator
    from embed_lm.model.collator import TextCollator
    from embed_lm.model.instructions import NaturalInstruction

    collator, style = TextCollator(tiny_mistral.tokenizer, 24, True), NaturalInstruction()
    marco = MsMarcoSource("m", collection=str(SAMPLE / "train/msmarco/collection.tsv"),
                          queries=str(SAMPLE / "train/msmarco/queries.train.tsv"),
                          qrels=str(SAMPLE / "train/msmarco/qrels.train.tsv"), max_examples=40)  # fills negatives
    sources = {"m": marco, "s": SyntheticSource("s", synthetic_dir(tmp_path, per_kind=10))}
    plain, fast = (ContrastiveDataModule("t", sources, collator, style, negatives_per_query=1, pretokenize=p,
                                         cache_dir=str(tmp_path / "c")) for p in (False, True))
    fast.prepare_data()
    plain.setup("fit"), fast.setup("fit")
    collate = PairCollator(collator, style)
    for rows in ([0, 5, 39], [40, 45, 59], [60, 61, 79]):  # MS-MARCO ids, two synthetic kinds
        a, b = collate([plain.dataset[i] for i in rows]), collate([fast.dataset[i] for i in rows])
        assert all(fast.dataset[i].tokens is not None for i in rows)
        for key in ("queries", "documents"):
            for name in ("input_ids", "attention_mask", "instruction_mask"):
                assert getattr(a[key], name).equal(getattr(b[key], name)), (rows, key, name)
