"""data=full: every public set's mapping on a few rows written in that set's real schema (tests/fixtures/public/),
compared with the examples read off those rows by hand; offline, a missing set fails at once naming the override."""

from __future__ import annotations

import os

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT, compose_train
from embed_lm.data.public import PublicSource

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
    "miracl": [("Is Creole a pidgin of French?", "Haitian Creole Haitian Creole is a French-based creole language.",
                ("French language French is a Romance language.",))],
    "mrtydi": [("When was quantum field theory developed?",
                "Quantum field theory Quantum field theory naturally began with the study of electromagnetic "
                "interactions, in the late 1920s.", ())],
    "dureader": [("中国的首都是哪里", "北京是中华人民共和国的首都。", ())],
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


@pytest.fixture(scope="module")
def full_sources():
    cfg = compose_train(["data=full"])
    return OmegaConf.to_container(cfg.data.sources, resolve=True)


def test_full_mix_lists_every_public_set(full_sources):
    public = {k for k, v in full_sources.items() if v and v["_target_"].endswith("PublicSource")}
    assert public == set(EXPECTED)
    assert full_sources["msmarco"] is None and full_sources["synthetic"] is not None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mapping_on_real_schema_fixture(full_sources, name):
    node = dict(full_sources[name])
    fixture = FIXTURES / name if (FIXTURES / name).is_dir() else FIXTURES / f"{name}.jsonl"
    node["local"] = str(fixture)
    source = instantiate(node)
    examples = source.load()
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


def test_offline_missing_set_fails_at_once_naming_the_override(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = PublicSource("nq", "tevatron", "t", dataset="embed-lm-tests/no-such-set")
    with pytest.raises(FileNotFoundError) as err:
        source.check()
    assert "embed-lm-tests/no-such-set" in str(err.value) and "data.sources.nq.local=" in str(err.value)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_missing_local_copy_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.sources.fever.local"):
        PublicSource("fever", "beir", "t", local=str(tmp_path / "nope")).check()


def test_train_with_an_uncached_set_stops_before_the_backbone_loads(tmp_path, monkeypatch):
    """data=full offline: the first public set that is not cached stops train() naming the override; the backbone
    (a 7B Mistral by default, not on this machine) is never loaded, so the error is about the data."""
    from embed_lm.train import train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_train(["data=full", "backbone=tiny_mistral", "logger=none", f"paths.data_dir={tmp_path}",
                         f"data.sources.synthetic.paths={FIXTURES}/eli5.jsonl"], tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data\.sources\.\w+\.local="):
        train(cfg)
