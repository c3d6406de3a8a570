"""data=full: every configured hub set is read through the very same `load_dataset` call as on the hub, from a local
replica laid out as its repository is (parquet/JSON files, config names, split names; the rows are the fixtures in
tests/fixtures/public/, in the set's real schema) and compared with the examples read off those rows by hand; a
script-only repository, a missing set and an unreachable one fail at once naming the fix; the paper's sample ratios
are the defaults and pick the same rows every run; the docs table matches the config.

    pytest -q tests/test_public_data.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT, compose_train
from embed_lm.data.public import PublicSource, ScriptOnlyError, SetUnavailableError
from embed_lm.errors import ConfigError

FIXTURES = ROOT / "tests" / "fixtures" / "public"
T14_WIKI = "Given a question, retrieve Wikipedia passages that answer the question"
# (query, positive, negatives) read off each fixture by hand: title + text joined with a space, qrels score 0 dropped
EXPECTED = {
    "msmarco_passage": [
        (")what was the immediate impact of the success of the manhattan project?",
         "The presence of communication amid scientific minds was equally important to the success of the Manhattan "
         "Project as scientific intellect was.",
         ("The Manhattan Project was the name for a project conducted during World War II.",
          "Nuclear weapons were first used in 1945.")),
        ("_________ justice is designed to repair the harm to victim, the community and the offender caused by the "
         "offender criminal act. question 19 options:",
         "The approach is based on a theory of justice that considers crime and wrongdoing to be an offense against an "
         "individual or community, rather than the State.", ())],
    "msmarco_document": [("what is the source of energy emitted by stars",
                          "The hot glowing surfaces of stars emit energy Stars emit energy in the form of "
                          "electromagnetic radiation.", ())],
    "nq": [("big little lies season 2 how many episodes",
            "Big Little Lies (TV series) series garnered several accolades. The second season consists of seven "
            "episodes.", ("Little Lies Little Lies is a song by Fleetwood Mac.",))],
    "triviaqa": [("Who was the man behind The Chipmunks?",
                  "Alvin and the Chipmunks created by Ross Bagdasarian, who performed as David Seville.",
                  ("Chipmunk Chipmunks are small striped rodents.",
                   "Squirrel Squirrels are members of the family Sciuridae."))],
    "squad": [("What sits on top of the Main Building at Notre Dame?",
               "Architecturally, the school has a Catholic character. Atop the Main Building's gold dome is a golden "
               "statue of the Virgin Mary.", ())],
    "fever": [("Nikolaj Coster-Waldau worked with the Fox Broadcasting Company.",
               "Nikolaj Coster-Waldau Nikolaj William Coster-Waldau is a Danish actor and producer.", ()),
              ("Nikolaj Coster-Waldau worked with the Fox Broadcasting Company.",
               "Fox Broadcasting Company The Fox Broadcasting Company is an American broadcast television network.",
               ())],
    "hotpotqa": [("Were Scott Derrickson and Ed Wood of the same nationality?",
                  "Scott Derrickson Scott Derrickson is an American director.", ()),
                 ("Were Scott Derrickson and Ed Wood of the same nationality?",
                  "Ed Wood Edward Davis Wood Jr. was an American filmmaker.", ())],
    "eli5": [("Why do we yawn?", "Nobody knows for sure, but one idea is that it cools the brain.", ())],
    "quora_duplicates": [
        ("Astrology: I am a Capricorn Sun Cap moon and cap rising...what does that say about me?",
         "I'm a triple Capricorn (Sun, Moon and ascendant in Capricorn) What does this say about me?",
         ("What is the best way to learn astrology?",))],
    "nli": [("A person on a horse jumps over a broken down airplane.", "A person is outdoors, on a horse.",
             ("A person is at a diner, ordering an omelette.",))],
    "miracl": [("Is Creole a pidgin of French?", "Haitian Creole is a French-based creole language.",
                ("French is a Romance language.",))],
    "mrtydi": [("When was quantum field theory developed?",
                "Quantum field theory Quantum field theory naturally began with the study of electromagnetic "
                "interactions, in the late 1920s.", ())],
    "dureader": [("中国的首都是哪里", "北京是中华人民共和国的首都。", ("上海是中国人口最多的城市。",))],
    "t2ranking": [("湖南省会是哪个城市", "长沙是湖南省的省会。", ())],
}
TASKS = {  # the paper's Table 14
    "msmarco_passage": {"Given a web search query, retrieve relevant passages that answer the query"},
    "msmarco_document": {"Given a web search query, retrieve relevant documents that answer the query"},
    "nq": {T14_WIKI}, "miracl": {T14_WIKI}, "mrtydi": {T14_WIKI},
    "triviaqa": {"Retrieve Wikipedia passages that answer the question"},
    "squad": {"Retrieve Wikipedia passages that answer the question"},
    "fever": {"Given a claim, retrieve documents that support or refute the claim"},
    "hotpotqa": {"Given a multi-hop question, retrieve documents that can help answer the question"},
    "eli5": {"Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum"},
    "quora_duplicates": {"Given a question, retrieve questions that are semantically equivalent to the given question",
                         "Find questions that have the same meaning as the input question"},
    "nli": {"Given a premise, retrieve a hypothesis that is entailed by the premise",
            "Retrieve semantically similar text"},
    "dureader": {"Given a Chinese search query, retrieve web passages that answer the question"},
    "t2ranking": {"Given a Chinese search query, retrieve web passages that answer the question"},
}


BUILT_LOCALLY = {"msmarco_document", "t2ranking"}  # BEIR folders written by `python -m embed_lm.data.build`


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> pa.Schema:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if v != {}} for r in rows]  # BEIR's empty `metadata: {}` (no parquet type)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path)
    return table.schema


def write_card(root: Path, configs: dict[str, dict[str, str]]) -> None:
    """README.md whose YAML `configs:` maps config -> split -> file pattern, as the hub's dataset cards do."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {pattern}" for split, pattern in splits.items()]
    (root / "README.md").write_text("\n".join(lines + ["---", ""]))


def beir_rows(folder: Path) -> tuple[list[dict], list[dict], list[dict]]:
    qrels = [dict(zip(("query-id", "corpus-id", "score"), line.split("\t")))
             for line in (folder / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    for row in qrels:
        row["score"] = int(row["score"])
    return jsonl_rows(folder / "corpus.jsonl"), jsonl_rows(folder / "queries.jsonl"), qrels


def hub_replica(node: dict, base: Path) -> dict:
    """`node` with its hub ids replaced by local replicas of those repositories (the fixture's rows, laid out as the
    repository is); nothing else changes, so the set is read by the same load_dataset call as on the hub."""
    name, root = node["name"], base / node["dataset"]
    root.mkdir(parents=True)
    node = dict(node)
    if node["mapping"] == "beir" and node.get("qrels_dataset"):  # BeIR/<set>: configs corpus, queries; -qrels repo
        corpus, queries, qrels = beir_rows(FIXTURES / name)
        write_parquet(root / "corpus" / "corpus-00000-of-00001.parquet", corpus)
        write_parquet(root / "queries" / "queries-00000-of-00001.parquet", queries)
        write_card(root, {"corpus": {"corpus": "corpus/corpus-*"}, "queries": {"queries": "queries/queries-*"}})
        qrels_root = base / node["qrels_dataset"]
        qrels_root.mkdir(parents=True)
        for split in ("train", "test"):  # train.tsv, dev.tsv, test.tsv at the root: splits named by the files
            header = "query-id\tcorpus-id\tscore\n"
            rows = qrels if split == "train" else qrels[:1]
            (qrels_root / f"{split}.tsv").write_text(header + "".join(
                f"{r['query-id']}\t{r['corpus-id']}\t{r['score']}\n" for r in rows))
        node["qrels_dataset"] = str(qrels_root)
    elif node["mapping"] == "beir":  # mteb/<set>: JSON files, card configs default (qrels), corpus, queries
        corpus, queries, qrels = beir_rows(FIXTURES / name)
        for file, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries), ("qrels/train.jsonl", qrels),
                           ("qrels/test.jsonl", qrels[:1])):
            (root / file).parent.mkdir(parents=True, exist_ok=True)
            (root / file).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_card(root, {"default": {"train": "qrels/train.jsonl", "test": "qrels/test.jsonl"},
                          "corpus": {"corpus": "corpus.jsonl"}, "queries": {"queries": "queries.jsonl"}})
    elif node.get("data_files"):  # the parquet export of a script repository: <config>/<split>/NNNN.parquet, no card
        rows = jsonl_rows(FIXTURES / f"{name}.jsonl")
        for config in node["configs"]:  # the fixture's rows in every config: each one is read
            write_parquet(root / config / "train" / "0000.parquet", rows)
            write_parquet(root / config / "dev" / "0000.parquet", rows[:1])
    else:  # a parquet repository with a card: one folder per config, files <split>-NNNNN-of-NNNNN.parquet
        rows = jsonl_rows(FIXTURES / f"{name}.jsonl")
        configs = node.get("configs") or ["plain_text" if name == "squad" else "default"]
        card = {}
        for config in configs + (["pair"] if node.get("configs") else []):  # another config, not read
            write_parquet(root / config / "train-00000-of-00001.parquet",
                          [{"anchor": "not read", "positive": "not read"}] if config == "pair" else rows)
            card[config] = {"train": f"{config}/train-*"}
        write_card(root, card)
    node["dataset"] = str(root)
    return node


@pytest.fixture(scope="module")
def full_sources():
    cfg = compose_train(["data=full"])
    return OmegaConf.to_container(cfg.data.sources, resolve=True)


def test_full_mix_lists_every_public_set(full_sources):
    public = {k for k, v in full_sources.items() if v and v["_target_"].endswith("PublicSource")}
    assert public == set(EXPECTED)
    assert full_sources["msmarco"] is None and full_sources["synthetic"] is not None
    hub = {k for k in public if full_sources[k]["local"] is None}
    assert hub == set(EXPECTED) - BUILT_LOCALLY


def test_paper_sample_ratios_are_the_defaults(full_sources):
    """FACTS.md section 1 (appendix A): ELI5 0.1, MS-MARCO passage 0.5, document 0.2, Quora 0.1, T2Ranking 0.5."""
    ratios = {k: v["sample_ratio"] for k, v in full_sources.items() if v and "sample_ratio" in v}
    assert ratios == {**dict.fromkeys(EXPECTED), "eli5": 0.1, "msmarco_passage": 0.5, "msmarco_document": 0.2,
                      "quora_duplicates": 0.1, "t2ranking": 0.5}
    assert all(full_sources[k]["ratio"] is None for k in EXPECTED)  # mixed in proportion to the examples used


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - BUILT_LOCALLY))
def test_hub_set_loads_through_the_hub_call_from_a_replica(full_sources, tmp_path, name):
    """The configured repository, config(s), split, revision and data_files, with only the hub id replaced by a
    replica root: check() resolves every table (a multi-config repository is probed per config, never config None)
    and the examples equal the fixture's, read by hand."""
    node = hub_replica({**full_sources[name], "sample_ratio": None}, tmp_path)
    source = instantiate(node)
    source.check()
    examples = source.load()
    configs = len(full_sources[name].get("configs") or [None])  # the replica holds the fixture in each config
    assert [(e.query, e.positive, e.negatives) for e in examples] == EXPECTED[name] * configs
    assert all(e.task in TASKS[name] for e in examples)


@pytest.mark.parametrize("name", sorted(BUILT_LOCALLY) + ["fever"])
def test_local_beir_folder(full_sources, name):
    node = {**full_sources[name], "local": str(FIXTURES / name), "sample_ratio": None}
    examples = instantiate(node).load()
    assert [(e.query, e.positive, e.negatives) for e in examples] == EXPECTED[name]
    assert all(e.task in TASKS[name] for e in examples)


def test_ms_marco_v21_mapping():
    """microsoft/ms_marco v2.1: every selected passage is a positive, the unselected ones its negatives."""
    source = PublicSource("m", "ms_marco_v21", "t", local=str(FIXTURES / "ms_marco_v21.jsonl"))
    [ex] = source.load()
    assert ex.query == "what is rba"
    assert ex.positive == "Results-Based Accountability is a disciplined way of thinking and taking action."
    assert ex.negatives == ("Since 2007, the RBA's outstanding reputation has been affected.",
                            "The Reserve Bank of Australia (RBA) came into being on 14 January 1960.")


def test_script_only_repository_is_refused_naming_the_set_and_the_fix(full_sources, tmp_path):
    """Tevatron/msmarco-passage's main branch: the raw files and msmarco-passage.py, which datasets >= 4 refuses."""
    root = tmp_path / "Tevatron" / "msmarco-passage"
    root.mkdir(parents=True)
    (root / "msmarco-passage.py").write_text("import datasets  # a loading script\n")
    write_parquet(root / "train.parquet", jsonl_rows(FIXTURES / "msmarco_passage.jsonl"))
    node = {**full_sources["msmarco_passage"], "dataset": str(root), "revision": None, "data_files": None}
    source = instantiate(node)
    for step in (source.check, source.load):
        with pytest.raises(ScriptOnlyError) as err:
            step()
        message = str(err.value)
        assert "data.sources.msmarco_passage" in message and "msmarco-passage.py" in message
        assert "revision=refs/convert/parquet" in message and "data.sources.msmarco_passage.local=" in message


def test_sample_ratio_uses_that_fraction_the_same_rows_every_run(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(40)]
    write_parquet(tmp_path / "eli5" / "data" / "train-00000-of-00001.parquet", rows)
    source = PublicSource("eli5", "columns", "t", dataset=str(tmp_path / "eli5"),
                          columns={"query": "question", "positive": "answer"}, sample_ratio=0.1)
    first, again = source.load(), source.load()
    assert len(first) == 4 and first == again
    assert {e.query for e in first} <= {r["question"] for r in rows}
    assert len(PublicSource("eli5", "columns", "t", dataset=str(tmp_path / "eli5"),
                            columns={"query": "question", "positive": "answer"}).load()) == 40
    with pytest.raises(ConfigError, match=r"data.sources.eli5.sample_ratio=1.5"):
        PublicSource("eli5", "columns", "t", dataset="x", sample_ratio=1.5)


def test_offline_missing_set_fails_at_once_naming_the_override(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = PublicSource("nq", "tevatron", "t", dataset="embed-lm-tests/no-such-set")
    with pytest.raises(SetUnavailableError) as err:
        source.check()
    assert "embed-lm-tests/no-such-set" in str(err.value) and "data.sources.nq.local=" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_missing_local_copy_names_the_option_and_the_build_step(tmp_path):
    with pytest.raises(SetUnavailableError, match=r"data.sources.fever.local"):
        PublicSource("fever", "beir", "t", local=str(tmp_path / "nope")).check()
    with pytest.raises(SetUnavailableError, match=r"python -m embed_lm.data.build t2ranking"):
        PublicSource("t2ranking", "beir", "t", local=str(tmp_path / "nope")).check()


def test_train_with_an_uncached_set_stops_before_the_backbone_loads(tmp_path, monkeypatch):
    """data=full offline: the first public set that is not cached stops train() naming the override; the backbone
    (a 7B Mistral by default, not on this machine) is never loaded, so the error is about the data."""
    from embed_lm.train import train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_train(["data=full", "backbone=tiny_mistral", "logger=none", f"paths.data_dir={tmp_path}",
                         f"data.sources.synthetic.paths={FIXTURES}/eli5.jsonl"], tmp_path)
    with pytest.raises(SetUnavailableError, match=r"data\.sources\.\w+\.local="):
        train(cfg)


def test_train_with_a_script_only_set_stops_before_the_backbone_loads(tmp_path):
    """A repository that cannot be read (here: a loading script, as on the hub) stops train() in check(), before the
    default 7B backbone (not on this machine) would load; online the same check resolves each hub repository."""
    from embed_lm.train import train

    root = tmp_path / "hub" / "wikipedia-nq"
    root.mkdir(parents=True)
    (root / "wikipedia-nq.py").write_text("import datasets\n")
    sets = [f"data.sources.{k}=null" for k in EXPECTED if k != "nq"]
    cfg = compose_train(["data=full", "backbone=tiny_mistral", "logger=none", *sets, f"data.sources.nq.dataset={root}",
                         "data.sources.nq.revision=null", "data.sources.nq.data_files=null",
                         f"data.sources.synthetic.paths={FIXTURES}/eli5.jsonl"], tmp_path)
    with pytest.raises(ScriptOnlyError, match=r"data\.sources\.nq: .*wikipedia-nq\.py"):
        train(cfg)


def docs_table() -> dict[str, dict[str, str]]:
    """The public-set table of docs/data.md: set -> {hub, used, licence, instruction}."""
    text = (ROOT / "docs" / "data.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \| (.+?) \| (.+?) \| (.+?) \|$", text, flags=re.M)
    return {r[0]: dict(zip(("hub", "used", "licence", "instruction"), r[1:])) for r in rows}


def test_docs_table_matches_the_config(full_sources):
    """docs/data.md (linked from the README): set, hub id, examples used, licence, instruction, as configured."""
    table = docs_table()
    assert set(table) == set(EXPECTED)
    for name, row in table.items():
        node = full_sources[name]
        hub = (f"`{node['dataset']}`" + (f" + `{node['qrels_dataset']}`" if node.get("qrels_dataset") else "")
               if node["local"] is None else f"`python -m embed_lm.data.build {name}`")
        assert row["hub"] == hub, name
        ratio = node["sample_ratio"]
        assert row["used"] == ("all" if ratio is None else f"{ratio:.0%}"), name
        assert row["licence"] == node["licence"], name
        tasks = [node["task"]] if isinstance(node["task"], str) else node["task"]
        assert row["instruction"] == " / ".join(f'"{t}"' for t in tasks), name
    assert "non-commercial" in table["quora_duplicates"]["licence"]
    assert "non-commercial" in table["msmarco_passage"]["licence"] and "none" in table["eli5"]["licence"]


def test_build_t2ranking_and_msmarco_document_from_their_files(tmp_path):
    """`python -m embed_lm.data.build <set> --from <files>` writes the BEIR folder data=full reads: only the judged
    documents, headers skipped, .gz read, a tab inside a passage kept; the set then loads through its local path."""
    import gzip

    from embed_lm.data.build import BuildError, main

    t2 = tmp_path / "T2Ranking" / "data"
    t2.mkdir(parents=True)
    (t2 / "collection.tsv").write_text("pid\tpara\n0\t长沙是湖南省的省会。\n1\t上海\t是一座城市。\n2\t不相关\n")
    (t2 / "queries.train.tsv").write_text("qid\ttext\n7\t湖南省会是哪个城市\n8\t没有判断的问题\n")
    (t2 / "qrels.retrieval.train.tsv").write_text("qid\tpid\n7\t0\n")
    main(["t2ranking", "--from", str(tmp_path / "T2Ranking"), "--out", str(tmp_path / "t2ranking")])
    assert len((tmp_path / "t2ranking" / "corpus.jsonl").read_text().splitlines()) == 1
    [ex] = PublicSource("t2ranking", "beir", "t", local=str(tmp_path / "t2ranking")).load()
    assert (ex.query, ex.positive) == ("湖南省会是哪个城市", "长沙是湖南省的省会。")

    docs = tmp_path / "msmarco-doc"
    docs.mkdir()
    with gzip.open(docs / "msmarco-docs.tsv.gz", "wt") as f:
        f.write("D1\thttp://a\tStars\tStars emit\tenergy.\nD2\thttp://b\tOther\tNot judged.\n")
    (docs / "msmarco-doctrain-queries.tsv").write_text("5\twhat do stars emit\n")
    (docs / "msmarco-doctrain-qrels.tsv").write_text("5 0 D1 1\n")
    main(["msmarco_document", "--from", str(docs), "--out", str(tmp_path / "doc")])
    [ex] = PublicSource("msmarco_document", "beir", "t", local=str(tmp_path / "doc")).load()
    assert (ex.query, ex.positive) == ("what do stars emit", "Stars Stars emit\tenergy.")

    with pytest.raises(SystemExit) as exit_:  # built already: one line, exit status 2, the folder untouched
        main(["msmarco_document", "--from", str(docs), "--out", str(tmp_path / "doc")])
    assert exit_.value.code == 2
    from embed_lm.data.build import build
    with pytest.raises(BuildError, match=r"lacks msmarco-docs.tsv, msmarco-doctrain-queries.tsv, msmarco-doctrain-q"):
        build("msmarco_document", tmp_path / "new", tmp_path / "T2Ranking")
    assert not (tmp_path / "new").exists()


def test_examples_used_are_recorded_in_the_run_folder(tmp_path):
    """setup() writes <run folder>/data_sources.json: per set, the examples used (after its sample ratio)."""
    import lightning as L

    from embed_lm.data.datamodule import ContrastiveDataModule

    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)]
    write_parquet(tmp_path / "eli5" / "data" / "train-00000-of-00001.parquet", rows)
    eli5 = PublicSource("eli5", "columns", "t", dataset=str(tmp_path / "eli5"),
                        columns={"query": "question", "positive": "answer"}, sample_ratio=0.1)
    nli = PublicSource("nli", "columns", TASKS["nli"], local=str(FIXTURES / "nli.jsonl"),
                       columns={"query": "anchor", "positive": "positive", "negative": "negative"})
    dm = ContrastiveDataModule("full", {"eli5": eli5, "nli": nli}, collator=None, instruction_style=None,
                               cache_dir=str(tmp_path / "cache"))
    dm.trainer = L.Trainer(default_root_dir=str(tmp_path / "run"), logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)
    dm.prepare_data()
    dm.setup("fit")
    record = json.loads((tmp_path / "run" / "data_sources.json").read_text())
    assert record == {"eli5": {"examples": 2, "share_of_batches": pytest.approx(2 / 3, abs=1e-5)},
                      "nli": {"examples": 1, "share_of_batches": pytest.approx(1 / 3, abs=1e-5)}}
