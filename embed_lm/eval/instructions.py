"""Per-task instructions for MTEB evaluation (the paper's Table 15) and how each task type is prompted.

mteb's task metadata carries the E5-mistral instructions for most MTEB(eng, v1) tasks (`metadata.prompt`); the ones
it lacks are filled here from the paper: every STS task "Retrieve semantically similar text.", SummEval and
CQADupStack as in Table 15.

Who gets the instruction (the paper, section 4.1 and Table 15): asymmetric tasks (retrieval, reranking) instruct
queries only, documents never; symmetric tasks (STS, pair classification, classification, clustering,
summarization) instruct every input. mteb passes prompt_type=document for the document side of asymmetric tasks
and query/None otherwise, so: document -> the style's document prefix (empty), anything else -> query prefix.
"""

from __future__ import annotations

STS_INSTRUCTION = "Retrieve semantically similar text."
PAPER_INSTRUCTIONS = {
    "SummEval": "Given a news summary, retrieve other semantically similar summaries",
    "CQADupstackRetrieval": "Given a question, retrieve detailed question descriptions from Stackexchange that are "
                            "duplicates to the given question",
}

# mteb task type -> the training task kind whose prefix the task_prefix style uses (classify:/query:/nothing)
KIND_BY_TASK_TYPE = {
    "Retrieval": "short-long",
    "Reranking": "short-long",
    "Classification": "long-short",
    "Clustering": "long-short",
    "STS": "sts",
    "PairClassification": "sts",
    "Summarization": "sts",
    "BitextMining": "bitext",
}


def task_instruction(name: str, task_type: str, metadata_prompt: str | dict | None) -> str:
    """The instruction text for a task (without the style's template)."""
    if name in PAPER_INSTRUCTIONS:
        return PAPER_INSTRUCTIONS[name]
    if isinstance(metadata_prompt, dict):
        metadata_prompt = metadata_prompt.get("query")
    if metadata_prompt:
        return metadata_prompt
    if task_type == "STS":
        return STS_INSTRUCTION
    raise KeyError(f"no instruction for task {name!r} ({task_type}); add one to embed_lm/eval/instructions.py "
                   "PAPER_INSTRUCTIONS or set the task metadata's prompt")


def task_kind(task_type: str) -> str:
    return KIND_BY_TASK_TYPE.get(task_type, "short-long")
