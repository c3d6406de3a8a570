"""Prompt templates and placeholder sampling for the paper's two-step synthetic data (FACTS.md section 4).

Step 1 (asymmetric kinds only): a brainstorm prompt asks for a JSON list of task definitions, naming a few domain
seeds drawn from embed_lm/assets/synth/topics.txt (224 domains) so that thousands of brainstorms do not all return
the same popular tasks (as later synthetic-data work seeds its prompts).
Step 2: an example prompt asks for one JSON object with the kind's fields (embed_lm.data.synthetic.FIELDS), with
placeholders (query type, length, clarity, difficulty, word counts, language) drawn per request. STS and bitext
skip step 1: their task definition is fixed and their prompt is self-contained.

Every request's placeholders come from `random.Random(f"{seed}/{request_id}")`, so a request renders the same prompt
on every run (which is what lets a killed run resume) and changing `seed` re-draws them all. The wording is ours,
paraphrasing the idea of the paper's appendix C.

    python -m embed_lm.synth model=x dry_run=true        # print one rendered prompt per step and kind
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from embed_lm.model.instructions import ASYMMETRIC_KINDS

# the paper's placeholder values (short-long, FACTS.md section 4)
QUERY_TYPES = ("extremely long-tail", "long-tail", "common")
QUERY_LENGTHS = ("less than 5 words", "5 to 15 words", "at least 10 words")
DIFFICULTIES = ("high school", "college", "PhD")
CLARITIES = ("clear", "understandable with some effort", "ambiguous")
NUM_WORDS = (50, 100, 200, 300, 400, 500)
# classification inputs and the symmetric tasks (appendix C; values as we read them there)
INPUT_LENGTHS = ("less than 10", "at least 10", "at least 50", "at least 100", "at least 200")
UNITS = ("sentence", "phrase", "passage")
HIGH_SCORES = ("4", "4.5", "5")
LOW_SCORES = ("2.5", "3", "3.5")
STS_DIFFICULTIES = ("elementary school", "high school", "college")

# "more weight on high-resource languages": English about 45%, 20 large languages about 35% together, the rest
# share 20%. The weights are ours; the paper samples from XLM-R's language list without giving them.
LANGUAGE_TIERS: dict[float, tuple[str, ...]] = {
    25.0: ("English",),
    1.0: ("Chinese", "Spanish", "French", "German", "Russian", "Japanese", "Portuguese", "Italian", "Arabic",
          "Korean", "Dutch", "Polish", "Turkish", "Vietnamese", "Indonesian", "Hindi", "Persian", "Swedish", "Czech",
          "Ukrainian"),
    0.3: ("Danish", "Finnish", "Norwegian", "Greek", "Hebrew", "Hungarian", "Romanian", "Thai", "Bengali", "Malay",
          "Bulgarian", "Croatian", "Serbian", "Slovak", "Slovenian", "Lithuanian", "Latvian", "Estonian", "Catalan",
          "Tagalog", "Urdu", "Tamil", "Telugu", "Marathi", "Gujarati", "Kannada", "Malayalam", "Swahili",
          "Afrikaans", "Georgian", "Armenian", "Azerbaijani", "Kazakh", "Uzbek", "Nepali", "Sinhala", "Khmer",
          "Burmese", "Amharic", "Welsh"),
}
LANGUAGES = tuple(lang for tier in LANGUAGE_TIERS.values() for lang in tier)
LANGUAGE_WEIGHTS = tuple(w for w, tier in LANGUAGE_TIERS.items() for _ in tier)

TOPICS_PER_BRAINSTORM = 3  # domain seeds named in each step-1 prompt (embed_lm/assets/synth/topics.txt)

# fixed task definitions of the one-step kinds (the instructions E5-mistral uses for these task types)
SYMMETRIC_TASKS = {"sts": "Retrieve semantically similar text.", "bitext": "Retrieve parallel sentences."}

BRAINSTORM = {  # kind -> (what the tasks are, two example task definitions, what each definition must say)
    "short-long": ("text retrieval tasks",
                   ("Given a symptom described by a patient, retrieve medical articles that discuss its causes.",
                    "Given a programming error message, retrieve forum threads that solve it."),
                   "say what the query is and which documents count as relevant"),
    "long-short": ("text classification tasks",
                   ("Classify a product review by the customer's sentiment.",
                    "Identify the topic of a news article."),
                   "say what the input text is and what its label means"),
    "short-short": ("text matching tasks where both input and target are short (a few words or one sentence)",
                    ("Given a news headline, find a headline about the same event.",
                     "Given a question, find a question that asks the same thing in other words."),
                    "say what the input is and what a matching short text is"),
    "long-long": ("text matching tasks where both input and target are long documents",
                  ("Given a research paper abstract, find the abstract of a paper that builds on it.",
                   "Given a legal contract, find a contract with equivalent clauses."),
                  "say what the input document is and what a matching document is"),
}

BRAINSTORM_TEMPLATE = """Brainstorm {n} distinct and useful {what}. Two examples of the kind of definition wanted:
- {example_1}
- {example_2}
Each definition is one sentence, should {must_say}, and should be broad enough to cover many different inputs.
Vary domains, audiences and intents; be creative. Draw on these domains and ones close to them: {topics}.
Answer with a JSON list of {n} strings and nothing else."""

JSON_ONLY = "Answer with the JSON object only, with no explanation."

EXAMPLE_TEMPLATES = {
    "short-long": """You are given a retrieval task: {task}
Write one example for it as a JSON object with these keys:
- "user_query": a query a user of this task might type.
- "positive_document": a document that is relevant to the query.
- "hard_negative_document": a document that looks relevant to the query but does not satisfy it.
Requirements:
- The query is {query_type} in topic, {query_length} long, and {clarity}.
- Each document has at least {num_words} words and does not copy the query verbatim.
- Understanding the query and documents takes {difficulty} level education.
- Query and documents are all in {language}.
""" + JSON_ONLY,
    "long-short": """You are given a classification task: {task}
Write one example for it as a JSON object with these keys:
- "input_text": a text to classify, {input_length} words long.
- "label": the correct label of input_text for this task.
- "misleading_label": a label that is plausible for this task but wrong for input_text.
Requirements:
- input_text is {clarity} and takes {difficulty} level education to understand.
- All values are in {language}.
""" + JSON_ONLY,
    "short-short": """You are given a text matching task: {task}
Write one example for it as a JSON object with these keys:
- "input": a short text (a few words or one sentence) for this task.
- "positive_document": a short text that is the right match for input.
Requirements:
- positive_document does not copy input verbatim.
- Both values are in {language}.
""" + JSON_ONLY,
    "long-long": """You are given a text matching task: {task}
Write one example for it as a JSON object with these keys:
- "input": a long document for this task, at least {num_words} words.
- "positive_document": a long document that is the right match for input, at least {num_words} words.
Requirements:
- positive_document does not copy input; it takes {difficulty} level education to understand both.
- Both values are in {language}.
""" + JSON_ONLY,
    "sts": """Write one example for a semantic textual similarity task as a JSON object with these keys:
- "S1": a {unit} on a topic of your choice.
- "S2": a {unit} whose similarity to S1 is {high_score} on a scale from 1 (unrelated) to 5 (same meaning).
- "S3": a {unit} whose similarity to S1 is {low_score} on the same scale.
Requirements:
- All three are in {language} and take {difficulty} level education to understand.
- Do not reuse the wording of these instructions.
""" + JSON_ONLY,
    "bitext": """Write one example for a translation retrieval task as a JSON object with these keys:
- "S1": a {unit} in {src_lang} on a topic of your choice.
- "S2": a translation of S1 into {tgt_lang}, similarity {high_score} on a scale from 1 to 5.
- "S3": a {unit} in {tgt_lang} that resembles a translation of S1 but differs in meaning, similarity {low_score}.
Requirements:
- The text takes {difficulty} level education to understand.
""" + JSON_ONLY,
}


@dataclass(frozen=True)
class Request:
    """One chat request. id: '<kind>/tasks/<j>' (step 1) or '<kind>/example/<i>' (step 2)."""

    id: str
    kind: str
    step: str                  # "tasks" or "example"
    prompt: str
    task: str | None = None    # example requests: the task definition the example is written for
    placeholders: dict = field(default_factory=dict)

    @property
    def index(self) -> int:
        return int(self.id.rsplit("/", 1)[1])

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def request_rng(seed: int, request_id: str) -> random.Random:
    return random.Random(f"{seed}/{request_id}")


def sample_language(rng: random.Random, fixed: str | None = None) -> str:
    return fixed or rng.choices(LANGUAGES, weights=LANGUAGE_WEIGHTS)[0]


def sample_placeholders(kind: str, rng: random.Random, language: str | None = None) -> dict[str, str]:
    """The placeholder values for one example prompt of `kind` (keys match EXAMPLE_TEMPLATES[kind])."""
    if kind == "bitext":
        src = sample_language(rng, language)
        tgt = sample_language(rng)
        while tgt == src:
            tgt = sample_language(rng)
        return {"unit": rng.choice(UNITS), "high_score": rng.choice(HIGH_SCORES), "low_score": rng.choice(LOW_SCORES),
                "difficulty": rng.choice(STS_DIFFICULTIES), "src_lang": src, "tgt_lang": tgt}
    p = {"language": sample_language(rng, language)}
    if kind == "short-long":
        p |= {"query_type": rng.choice(QUERY_TYPES), "query_length": rng.choice(QUERY_LENGTHS),
              "clarity": rng.choice(CLARITIES), "num_words": str(rng.choice(NUM_WORDS)),
              "difficulty": rng.choice(DIFFICULTIES)}
    elif kind == "long-short":
        p |= {"input_length": rng.choice(INPUT_LENGTHS), "clarity": rng.choice(CLARITIES),
              "difficulty": rng.choice(DIFFICULTIES)}
    elif kind == "long-long":
        p |= {"num_words": str(rng.choice(NUM_WORDS)), "difficulty": rng.choice(DIFFICULTIES)}
    elif kind == "sts":
        p |= {"unit": rng.choice(UNITS), "high_score": rng.choice(HIGH_SCORES), "low_score": rng.choice(LOW_SCORES),
              "difficulty": rng.choice(STS_DIFFICULTIES)}
    return p


def language_of(placeholders: dict[str, str]) -> str:
    if "src_lang" in placeholders:
        return f"{placeholders['src_lang']}-{placeholders['tgt_lang']}"
    return placeholders["language"]


@cache
def topic_seeds() -> tuple[str, ...]:
    """The domain seeds of embed_lm/assets/synth/topics.txt (package data; '#' lines are comments)."""
    text = (Path(__file__).resolve().parents[1] / "assets" / "synth" / "topics.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def brainstorm_request(kind: str, j: int, n: int, seed: int = 0, n_topics: int = TOPICS_PER_BRAINSTORM) -> Request:
    """Step 1, request j of `kind`: ask for n task definitions around `n_topics` domain seeds drawn by (seed, id)."""
    rid = f"{kind}/tasks/{j}"
    topics = ", ".join(request_rng(seed, rid).sample(topic_seeds(), n_topics))
    what, (ex1, ex2), must_say = BRAINSTORM[kind]
    prompt = BRAINSTORM_TEMPLATE.format(n=n, what=what, example_1=ex1, example_2=ex2, must_say=must_say,
                                        topics=topics)
    return Request(rid, kind, "tasks", prompt, placeholders={"n": str(n), "topics": topics})


def example_request(kind: str, i: int, task: str | None, seed: int, language: str | None = None) -> Request:
    """Step 2, example i of `kind` for `task` (None for STS/bitext, whose task definition is fixed)."""
    rid = f"{kind}/example/{i}"
    placeholders = sample_placeholders(kind, request_rng(seed, rid), language)
    task = SYMMETRIC_TASKS[kind] if kind in SYMMETRIC_TASKS else task
    if task is None:
        raise ValueError(f"{kind} examples need a task definition from step 1")
    prompt = EXAMPLE_TEMPLATES[kind].format(task=task, **placeholders)
    return Request(rid, kind, "example", prompt, task, placeholders)


def sample_task(kind: str) -> str:
    """A stand-in task definition for previews (dry run) before step 1 has produced real ones."""
    return BRAINSTORM[kind][1][0] if kind in ASYMMETRIC_KINDS else SYMMETRIC_TASKS[kind]
