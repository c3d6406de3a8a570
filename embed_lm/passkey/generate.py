"""The personalized passkey retrieval task (paper section 5.2, Figure 4): documents, queries, length fitting.

    task = generate_task(tokenizer, length=4096, n_queries=50, n_candidates=100, scheme="per_query", seed=0)
    task.text(task.docs[0])   # "The grass is green. ... Ann Lee's pass key is 48213. Remember it. 48213 is ..."
    task.queries[0].text      # "what is the pass key for Ann Lee?"

A document is FILLER repeated, with one NEEDLE (a person's name and key, twice) inserted at a sentence boundary
chosen uniformly among the document's sentence boundaries (so the needle's relative position spreads over [0, 1]).

Length. `length` counts every token the model sees for a document, as embed_lm.model.collator builds the row: the
tokenizer's own special tokens (BOS for Mistral/LLaMA) + the text's tokens + the appended EOS (append_eos=True).
A 4096-token document thus fills Mistral's 4096-token window exactly, EOS included. Every document has between
`length - tolerance` and `length` tokens, checked by tokenizing it; the filler after the needle is cut at a token
boundary of the filler, so a document may end mid-sentence ("... The sky is"). Default tolerance 0: with the
bundled tiny tokenizer and Mistral's, the fit is exact; a tokenizer that cannot be fitted raises FitError.

Schemes: "per_query" (the paper): each query has its own n_candidates documents (n_queries * n_candidates in all),
the positive at a random index; "shared" (later work): one set of n_candidates documents per length, and the
queries ask for n_queries distinct people of it. Names are "First Last" from Faker's en_US person lists (690 first
x 1000 last names), unique within each candidate set; keys have key_digits digits, no leading zero. Everything is
drawn from random.Random(f"passkey/{seed}/{length}/{scheme}"), so a seed reproduces the task exactly.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from embed_lm.errors import ConfigError, UserError

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "{name}'s pass key is {key}. Remember it. {key} is the pass key for {name}."
QUERY = "what is the pass key for {name}?"
SCHEMES = ("per_query", "shared")
_UNIT = FILLER + " "


class FitError(UserError, ValueError):
    """A document could not be brought within the length tolerance."""


def filler(n_chars: int) -> str:
    return (_UNIT * (n_chars // len(_UNIT) + 1))[:n_chars]


@dataclass(frozen=True)
class Document:
    name: str
    key: str
    head: int  # filler characters before the needle (a sentence boundary)
    end: int  # filler characters in the document (before + after the needle)
    n_tokens: int  # tokens the model sees: special tokens + text + appended EOS
    needle_token: int  # index of the needle's first token in that row

    @property
    def text(self) -> str:
        return render(self.name, self.key, self.head, self.end)


@dataclass(frozen=True)
class Query:
    name: str
    key: str
    positive: int  # index into Task.docs
    candidates: tuple[int, ...]  # indices into Task.docs, the positive among them

    @property
    def text(self) -> str:
        return QUERY.format(name=self.name)


@dataclass
class Task:
    length: int
    scheme: str
    seed: int
    key_digits: int
    docs: list[Document] = field(default_factory=list)
    queries: list[Query] = field(default_factory=list)


def render(name: str, key: str, head: int, end: int) -> str:
    text = filler(end)
    parts = (text[:head], NEEDLE.format(name=name, key=key), text[head:].strip())
    return " ".join(p for p in parts if p)


def count_tokens(tokenizer, texts: Sequence[str], append_eos: bool) -> list[int]:
    """Row lengths as embed_lm.model.collator.TextCollator builds them (no truncation): the tokenizer's special tokens,
    then, with append_eos, any EOS the tokenizer added is dropped and one EOS appended."""
    enc = tokenizer(list(texts), add_special_tokens=True, return_special_tokens_mask=True, verbose=False)
    out = []
    for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
        n = len(ids)
        if append_eos:
            n += 0 if ids and ids[-1] == tokenizer.eos_token_id and special[-1] else 1
        out.append(n)
    return out


@lru_cache(maxsize=1)
def _names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        from faker.providers.person.en_US import Provider
    except ImportError as e:
        raise ImportError("the passkey task draws person names from Faker: pip install faker") from e
    return tuple(sorted(set(Provider.first_names))), tuple(sorted(set(Provider.last_names)))


def draw_people(rng: random.Random, n: int, key_digits: int) -> list[tuple[str, str]]:
    """n (unique name, key) pairs."""
    if key_digits < 1:
        raise ConfigError(f"key_digits must be >= 1, got {key_digits}")
    first, last = _names()
    if n > len(first) * len(last) // 2:
        raise ConfigError(f"{n} candidates is more than the name lists can keep unique")
    names: dict[str, None] = {}
    while len(names) < n:
        names.setdefault(f"{rng.choice(first)} {rng.choice(last)}")
    return [(name, str(rng.randint(10 ** (key_digits - 1), 10**key_digits - 1))) for name in names]


class Fitter:
    """Fits documents of one target length for one tokenizer (the filler is tokenized once)."""

    def __init__(self, tokenizer, length: int, append_eos: bool = True, tolerance: int = 0) -> None:
        self.tokenizer, self.length, self.append_eos, self.tolerance = tokenizer, length, append_eos, tolerance
        self.n_special = count_tokens(tokenizer, [""], append_eos)[0]  # BOS + EOS
        lead = tokenizer("x", add_special_tokens=True, return_special_tokens_mask=True)["special_tokens_mask"]
        self.n_lead = next((i for i, s in enumerate(lead) if not s), 0)  # special tokens before the text
        n_unit = len(tokenizer(FILLER, add_special_tokens=False)["input_ids"])
        stream = filler((length // max(n_unit, 1) + 2) * len(_UNIT))
        offsets = tokenizer(stream, add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)["offset_mapping"]
        self.ends = [e for _, e in offsets]  # (T,) character end of each filler token
        self.boundaries = [0] + [i + 1 for i, c in enumerate(stream) if c == "." and i + 1 < len(stream)]

    def tokens_before(self, chars: int) -> int:
        return bisect.bisect_right(self.ends, chars)

    def fit(self, people: Sequence[tuple[str, str]], fracs: Sequence[float]) -> list[Document]:
        """One document per (name, key), the needle at relative sentence boundary fracs[i] in [0, 1)."""
        docs = []
        for (name, key), frac in zip(people, fracs):
            n_needle = len(self.tokenizer(" " + NEEDLE.format(name=name, key=key), add_special_tokens=False)
                           ["input_ids"])
            m = self.length - self.n_special - n_needle  # filler tokens, if tokenization is additive
            if m < 0:
                raise FitError(f"length {self.length} is shorter than the needle ({n_needle} tokens) plus "
                               f"{self.n_special} special tokens; use lengths >= {n_needle + self.n_special}")
            eligible = self.boundaries[:bisect.bisect_right(self.boundaries, self._chars(m - 8))] or [0]
            head = eligible[int(frac * len(eligible))]
            docs.append(self._fit_one(name, key, head, m))
        return docs

    def _chars(self, m: int) -> int:
        return self.ends[m - 1] if m > 0 else 0

    def _fit_one(self, name: str, key: str, head: int, m: int) -> Document:
        best: tuple[int, int] | None = None  # (n_tokens, m) of the longest fit within length
        seen = set()
        while m not in seen and 0 <= m <= len(self.ends):
            seen.add(m)
            end = max(self._chars(m), head)
            n = count_tokens(self.tokenizer, [render(name, key, head, end)], self.append_eos)[0]
            if n <= self.length and (best is None or n > best[0]):
                best = (n, m)
            if n == self.length:
                break
            m += self.length - n
        if best is None or self.length - best[0] > self.tolerance:
            got = "none below the target" if best is None else f"at best {best[0]}"
            raise FitError(f"cannot fit a {self.length}-token document within tolerance {self.tolerance} with "
                           f"tokenizer {self.tokenizer.name_or_path} ({got}); raise passkey tolerance=")
        n, m = best
        return Document(name, key, head, max(self._chars(m), head), n, self.n_lead + self.tokens_before(head))


def generate_task(tokenizer, length: int, n_queries: int = 50, n_candidates: int = 100, scheme: str = "per_query",
                  key_digits: int = 5, seed: int = 0, append_eos: bool = True, tolerance: int = 0,
                  progress: Callable[[int], object] | None = None) -> Task:
    """The task for one length; `progress(n)` is called after each n documents are fitted."""
    if scheme not in SCHEMES:
        raise ConfigError(f"passkey scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "shared" and n_queries > n_candidates:
        raise ConfigError(f"scheme=shared asks about distinct people of one candidate set: n_queries ({n_queries}) "
                         f"must be <= n_candidates ({n_candidates})")
    rng = random.Random(f"passkey/{seed}/{length}/{scheme}")
    fitter = Fitter(tokenizer, length, append_eos, tolerance)
    task = Task(length, scheme, seed, key_digits)
    for _ in range(n_queries if scheme == "per_query" else 1):
        people = draw_people(rng, n_candidates, key_digits)
        start = len(task.docs)
        task.docs += fitter.fit(people, [rng.random() for _ in people])
        ids = tuple(range(start, start + n_candidates))
        picks = [rng.randrange(n_candidates)] if scheme == "per_query" else rng.sample(range(n_candidates), n_queries)
        task.queries += [Query(*people[p], positive=ids[p], candidates=ids) for p in picks]
        if progress is not None:
            progress(n_candidates)
    return task
