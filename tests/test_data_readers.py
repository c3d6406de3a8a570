import gzip
import json

import pytest

from embed_lm.data.beir import BeirSplit
from embed_lm.data.msmarco import MsMarcoSource
from embed_lm.model.instructions import MSMARCO_TASK
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


# --- readers never corrupt or drop silently (issue 11) ------------------------------------------------------------
def ids_source(d, triples="triples.tsv", **kw):
    return MsMarcoSource("m", collection=str(d / "collection.tsv"), queries=str(d / "queries.tsv"),
                         triples=str(d / triples), **kw)


def test_tab_inside_a_passage_is_kept(marco):
    (marco / "collection.tsv").write_text("0\tparis\tis the capital\n1\tberlin is in germany\n2\tthe sky is blue\n")
    ex = ids_source(marco).load()
    assert ex[0].positive == "paris\tis the capital" and ex[1].negatives == ("paris\tis the capital",)


def test_text_triples_with_a_wrong_column_count_name_the_line(tmp_path):
    (tmp_path / "t.tsv").write_text("q\tp\tn\nq2\tpos with\ta tab\tn2\n")
    with pytest.raises(DataFormatError, match=r"t.tsv:2: expected 3 tab-separated columns, found 4"):
        MsMarcoSource("m", triples=str(tmp_path / "t.tsv")).load()
    (e,) = MsMarcoSource("m", triples=str(tmp_path / "t.tsv"), skip_invalid=True).load()
    assert e.query == "q"


@pytest.mark.parametrize("file, content, field", [
    ("collection.tsv", "0\tparis is the capital of france\n1\tberlin is in germany\n2\t \n", "passage"),
    ("queries.tsv", "10\tcapital of france\n11\t\n", "query"),
])
def test_empty_texts_are_errors_or_counted_skips(marco, file, content, field, caplog):
    (marco / file).write_text(content)
    with pytest.raises(DataFormatError, match=rf"{file}:\d+: field '{field}' is empty"):
        ids_source(marco).load()
    kept = ids_source(marco, skip_invalid=True).load()  # the line is skipped, then the pair that needs it
    assert len(kept) == 1 and "skipped 2 invalid lines" in caplog.text


def test_empty_text_triple_cell_is_an_error(tmp_path):
    (tmp_path / "t.tsv").write_text("q\t\tn\n")
    with pytest.raises(DataFormatError, match=r"t.tsv:1: field 'positive' is empty"):
        MsMarcoSource("m", triples=str(tmp_path / "t.tsv")).load()


def test_repeated_pid_with_another_text_is_an_error_same_text_is_fine(marco):
    with (marco / "collection.tsv").open("a") as f:
        f.write("0\tparis is the capital of france\n")  # the same text again: fine
    assert len(ids_source(marco).load()) == 2
    with (marco / "collection.tsv").open("a") as f:
        f.write("2\ta different text\n")
    with pytest.raises(DataFormatError, match=r"collection.tsv:5: field 'id' '2' repeats line 3 with a different"):
        ids_source(marco).load()
    assert ids_source(marco, skip_invalid=True).load()[0].negatives == ("the sky is blue",)  # the first is kept


def test_every_positive_of_a_jsonl_line_is_used(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [{"query": "q", "positives": ["A", "B", "C"], "negatives": ["n"]}])
    ex = MsMarcoSource("m", jsonl=str(tmp_path / "m.jsonl")).load()
    assert [(e.query, e.positive, e.negatives) for e in ex] == [("q", p, ("n",)) for p in "ABC"]


def test_non_utf8_byte_names_the_line_and_skip_invalid_skips_it(tmp_path, marco):
    path = tmp_path / "sts.jsonl"
    good = json.dumps(ONE_OF_EACH["sts.jsonl"]).encode()
    path.write_bytes(good + b"\n" + good.replace(b'"q"', b'"\xff"') + b"\n" + good + b"\n")
    with pytest.raises(DataFormatError, match=r"sts.jsonl:2: not valid UTF-8 \(byte 0xff"):
        SyntheticSource("s", str(path)).load()
    assert len(SyntheticSource("s", str(path), skip_invalid=True).load()) == 2
    (marco / "queries.tsv").write_bytes(b"10\tcapital of france\n11\twhere is b\xe9rlin\n")
    with pytest.raises(DataFormatError, match=r"queries.tsv:2: not valid UTF-8"):
        ids_source(marco).load()


@pytest.mark.parametrize("make", ["synthetic", "jsonl", "text triples", "ids triples"])
def test_an_empty_training_file_is_named(tmp_path, marco, make):
    empty = tmp_path / "short_long.jsonl"
    empty.write_text("\n")
    if make == "synthetic":
        source = SyntheticSource("s", str(empty))
    elif make == "jsonl":
        source = MsMarcoSource("m", jsonl=str(empty))
    elif make == "text triples":
        source = MsMarcoSource("m", triples=str(empty))
    else:
        (marco / "triples.tsv").write_text("")
        source, empty = ids_source(marco), marco / "triples.tsv"
    with pytest.raises(ValueError, match=rf"{empty}: no training examples in this file \(it is empty\)"):
        source.load()
