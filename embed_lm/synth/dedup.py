"""Near-duplicate task definitions: MinHash LSH (datasketch) over content words, then the exact Jaccard decides.

    kept, near = dedup_tasks(["Given a symptom, retrieve articles on its causes.",
                              "Retrieve articles on the causes of a given symptom."], threshold=0.7)
    # kept: the first; near: [NearDuplicate(task=<the second>, of=<the first>, jaccard=1.0)]

A task's content words are its lower-cased word tokens minus function words and the verbs every definition uses
("given", "retrieve", "find", ...), so a reworded definition ("Find X for a given Y" vs "Given Y, retrieve X")
keeps its set. Greedy in input order (step-1 request order, stable across resumes): a task is a near duplicate when
the Jaccard similarity of its set with an already kept task's set is >= threshold. LSH proposes candidates
(num_perm permutations, fixed seed: deterministic), the exact Jaccard of the sets accepts or rejects them, so no
pair is called similar that is not. Cost: ~O(n) (one MinHash and one LSH query per task).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from embed_lm.errors import ConfigError

WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset("""a an the and or but of for to in on at by with from into about as is are be been being that
this these those it its their them they which who whom whose what when where how than then there such each any all
some one two own given retrieve retrieves retrieving find finds finding return returns identify identifies
match matches matching select locate search get provide write user users text texts task tasks input inputs
concerning regarding related relevant when whether""".split())


@dataclass(frozen=True)
class NearDuplicate:
    task: str
    of: str           # the kept task it duplicates
    jaccard: float    # of the two content-word sets


def content_words(text: str) -> frozenset[str]:
    words = WORD.findall(text.lower())
    return frozenset(w for w in words if w not in STOPWORDS) or frozenset(words)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def dedup_tasks(tasks: list[str], threshold: float = 0.7, num_perm: int = 128) -> tuple[list[str],
                                                                                       list[NearDuplicate]]:
    """Tasks kept (in order) and the near duplicates dropped. Exact repeats are dropped first (not counted)."""
    from datasketch import MinHash, MinHashLSH

    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"task_dedup_threshold must be in (0, 1], got {threshold}")
    tasks = list(dict.fromkeys(tasks))
    sets = [content_words(t) for t in tasks]
    hashes = MinHash.bulk([[w.encode() for w in s] for s in sets], num_perm=num_perm, seed=1)
    lsh = MinHashLSH(threshold=max(0.05, threshold - 0.15), num_perm=num_perm)  # generous: exact Jaccard decides
    kept: list[str] = []
    near: list[NearDuplicate] = []
    for i, (task, words, mh) in enumerate(zip(tasks, sets, hashes, strict=True)):
        best = max(((jaccard(words, sets[j]), j) for j in map(int, lsh.query(mh))), default=(0.0, -1))
        if best[0] >= threshold:
            near.append(NearDuplicate(task, tasks[best[1]], round(best[0], 4)))
        else:
            lsh.insert(str(i), mh)
            kept.append(task)
    return kept, near
