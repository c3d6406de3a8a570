import pytest

from embed_lm.model.instructions import NaturalInstruction, NoInstruction, TaskTypePrefix

TASK = "Given a web search query, retrieve relevant passages that answer the query"


def test_natural_is_the_papers_template():
    assert NaturalInstruction().query_prefix(TASK, "short-long") + "how do cats purr" == (
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: how do cats purr")


@pytest.mark.parametrize("kind", ["short-long", "long-short", "sts", "bitext"])
def test_documents_never_get_an_instruction(kind):
    for style in (NaturalInstruction(), NoInstruction(), TaskTypePrefix()):
        assert style.document_prefix(TASK, kind) == ""


def test_none_is_the_raw_query():
    assert NoInstruction().query_prefix(TASK, "short-long") == ""


@pytest.mark.parametrize("kind,prefix", [("long-short", "classify: "), ("short-long", "query: "),
                                         ("short-short", "query: "), ("long-long", "query: "), ("sts", ""),
                                         ("bitext", "")])
def test_task_prefix_by_kind(kind, prefix):
    assert TaskTypePrefix().query_prefix(TASK, kind) == prefix


def test_task_prefix_rejects_unknown_kind():
    with pytest.raises(ValueError, match="short-long"):
        TaskTypePrefix().query_prefix(TASK, "retrieval")
