import gzip
import json

import pytest

from embed_lm.data.beir import BeirSplit
from embed_lm.data.msmarco import MSMARCO_TASK, MsMarcoSource
from embed_lm.data.records import DataFormatError
from embed_lm.data.synthetic import SyntheticSource

ONE_OF_EACH = {
    "short_long.jsonl": {"task": "t1", "user_query": "q", "positive_document": "p", "hard_negative_document": "n"},
    "long_short.jsonl": {"task": "t2", "input_text": "q", "label": "p", "misleading_label": "n"},
    "short_short.jsonl": {"task": "t3", "input": "q", "positive_document": "p"},
    "long_long.jsonl": {"task": "t4", "input": "q", "positive_document": "p", "hard_negative_document": "n"},
    "sts.jsonl": {"task": "t5", "S1": "q", "S2": "p", "S3": "n"},
    "bitext.jsonl": {"task": "t6", "S1": "q", "S2": "p", "S3": "n"},
}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_all_six_synthetic_kinds(tmp_path):
    for name, row in ONE_OF_EACH.items():
        write_jsonl(tmp_path / name, [row])
    examples = SyntheticSource("synthetic", str(tmp_path / "*.jsonl")).load()
    by_kind = {e.task_kind: e for e in examples}
    assert set(by_kind) == {"short-long", "long-short", "short-short", "long-long", "sts", "bitext"}
    for e in examples:
        assert (e.query, e.positive) == ("q", "p")
    assert by_kind["short-short"].negatives == ()
    assert by_kind["long-long"].negatives == ("n",) and by_kind["sts"].negatives == ("n",)
    assert by_kind["long-short"].task == "t2"


def test_task_kind_field_overrides_file_name_and_gzip_is_read(tmp_path):
    path = tmp_path / "mixed.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"task_kind": "sts", "task": "t", "S1": "a", "S2": "b", "S3": "c"}) + "\n")
    (e,) = SyntheticSource("s", str(path)).load()
    assert (e.task_kind, e.query, e.negatives) == ("sts", "a", ("c",))


def test_malformed_line_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "short_long.jsonl", [ONE_OF_EACH["short_long.jsonl"],
                                                        {"task": "t", "user_query": "q", "hard_negative_document": "n"}])
    with pytest.raises(DataFormatError) as err:
        SyntheticSource("s", str(path)).load()
    assert err.value.line == 2 and err.value.field == "positive_document"
    assert f"{path}:2" in str(err.value) and "positive_document" in str(err.value)


def test_invalid_json_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "sts.jsonl", [ONE_OF_EACH["sts.jsonl"], "", '{"S1": "a", "S2": ', "[1, 2]"])
    with pytest.raises(DataFormatError, match=r"sts.jsonl:3: invalid JSON"):
        SyntheticSource("s", str(path)).load()


def test_skip_invalid_skips_and_logs_the_count(tmp_path, caplog):
    path = write_jsonl(tmp_path / "sts.jsonl", [ONE_OF_EACH["sts.jsonl"], '{"S1": "a"', {"task": "t", "S1": "a"},
                                                 ONE_OF_EACH["sts.jsonl"], [1]])
    examples = SyntheticSource("s", str(path), skip_invalid=True).load()
    assert len(examples) == 2
    assert "skipped 3 invalid lines" in caplog.text


def test_unknown_kind_says_how_to_name_it(tmp_path):
    path = write_jsonl(tmp_path / "mydata.jsonl", [ONE_OF_EACH["sts.jsonl"]])
    with pytest.raises(DataFormatError, match="task_kind"):
        SyntheticSource("s", str(path)).load()


def test_missing_files_name_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.sources.synthetic.paths"):
        SyntheticSource("synthetic", str(tmp_path / "nothing/*.jsonl")).check()
    with pytest.raises(FileNotFoundError, match=r"data.sources.msmarco.collection"):
        MsMarcoSource("msmarco", collection=str(tmp_path / "c.tsv"), queries=str(tmp_path / "q.tsv"),
                      triples=str(tmp_path / "t.tsv")).check()


@pytest.fixture
def marco(tmp_path):
    (tmp_path / "collection.tsv").write_text("0\tparis is the capital of france\n1\tberlin is in germany\n"
                                             "2\tthe sky is blue\n")
    (tmp_path / "queries.tsv").write_text("10\tcapital of france\n11\twhere is berlin\n")
    (tmp_path / "qrels.tsv").write_text("10\t0\t0\t1\n11\t0\t1\t1\n")
    (tmp_path / "triples.tsv").write_text("10\t0\t2\n11\t1\t0\n")
    return tmp_path


def test_msmarco_ids_with_triples(marco):
    ex = MsMarcoSource("m", collection=str(marco / "collection.tsv"), queries=str(marco / "queries.tsv"),
                       triples=str(marco / "triples.tsv")).load()
    assert [(e.query, e.positive, e.negatives) for e in ex] == [
        ("capital of france", "paris is the capital of france", ("the sky is blue",)),
        ("where is berlin", "berlin is in germany", ("paris is the capital of france",))]
    assert all(e.task == MSMARCO_TASK and e.task_kind == "short-long" for e in ex)


def test_msmarco_ids_with_qrels_only(marco):
    ex = MsMarcoSource("m", collection=str(marco / "collection.tsv"), queries=str(marco / "queries.tsv"),
                       qrels=str(marco / "qrels.tsv")).load()
    assert [(e.query, e.negatives) for e in ex] == [("capital of france", ()), ("where is berlin", ())]


def test_msmarco_unknown_id_names_the_line(marco):
    (marco / "triples.tsv").write_text("10\t0\t2\n11\t7\t0\n")
    with pytest.raises(DataFormatError, match=r"triples.tsv:2: field 'passage id' '7' not found"):
        MsMarcoSource("m", collection=str(marco / "collection.tsv"), queries=str(marco / "queries.tsv"),
                      triples=str(marco / "triples.tsv")).load()


def test_msmarco_text_triples_and_jsonl(tmp_path):
    (tmp_path / "triples.train.small.tsv").write_text("q one\tpos one\tneg one\n")
    (e,) = MsMarcoSource("m", triples=str(tmp_path / "triples.train.small.tsv")).load()
    assert (e.query, e.positive, e.negatives) == ("q one", "pos one", ("neg one",))
    write_jsonl(tmp_path / "m.jsonl", [{"query": "q", "positive": "p", "negatives": ["n1", "n2"]},
                                       {"query": "q2", "pos": ["p2"]}])
    a, b = MsMarcoSource("m", jsonl=str(tmp_path / "m.jsonl")).load()
    assert a.negatives == ("n1", "n2") and (b.positive, b.negatives) == ("p2", ())
    write_jsonl(tmp_path / "bad.jsonl", [{"query": "q"}])
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1: field 'positive'"):
        MsMarcoSource("m", jsonl=str(tmp_path / "bad.jsonl")).load()


def test_msmarco_needs_a_format():
    with pytest.raises(ValueError, match="jsonl"):
        MsMarcoSource("m", collection="c.tsv")


def test_bundled_sample_loads_in_both_formats_and_beir(compose_cfg):
    from conftest import SAMPLE

    synth = SyntheticSource("s", str(SAMPLE / "train/synthetic/*.jsonl")).load()
    marco = MsMarcoSource("m", collection=str(SAMPLE / "train/msmarco/collection.tsv"),
                          queries=str(SAMPLE / "train/msmarco/queries.train.tsv"),
                          triples=str(SAMPLE / "train/msmarco/triples.train.ids.tsv")).load()
    assert len(synth) == 5000 and len(marco) == 2000  # 4,000 short-long + 1,000 long-short (reverse task)
    assert {e.task_kind for e in synth} == {"short-long", "long-short"} and len({e.task for e in synth}) == 10
    assert all(len(e.negatives) == 1 and e.negatives[0] != e.positive for e in synth + marco)
    test = BeirSplit(str(SAMPLE / "test"), "test", "task").load()
    assert (len(test.queries), len(test.corpus)) == (500, 2500)
    train_queries = {e.query for e in synth + marco}
    assert not train_queries & set(test.queries.values())  # held out


def test_beir_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        BeirSplit(str(tmp_path), "test", "task").check()
