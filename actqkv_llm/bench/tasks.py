"""Synthetic RULER-style retrieval tasks, generated locally and deterministically from a seed.

A sample is a document (``prompt_document``, prefilled raw with ``eng.prefill(text, chat=False)``),
a ``continuation`` that asks the question and starts the answer ("... The pass key is"), and the
value(s) the first generated line must contain. Length is counted in tokens of a caller-supplied
``count_tokens(text) -> int`` (the engine's tokenizer in a real run; see :func:`hf_token_counter`),
and covers document + continuation: a sample of length L never exceeds L tokens and falls short of
it by at most ``tolerance(L)``.

Tasks (``TASKS``), each on a haystack (``HAYSTACKS``):

- ``passkey``: "The pass key is 71432. Remember it. 71432 is the pass key." in filler text.
- ``niah_single``: one "The special magic number for <key> is <7 digits>." needle.
- ``niah_multikey``: the same needle among distractor needles for other keys (random depths).
- ``niah_multivalue``: several values for one key; all must be answered.
- ``vt``: variable tracking: ``VAR ABCDE = 12345`` then ``VAR FGHIJ = VAR ABCDE`` ...; name every
  variable that ends up holding the value.

Depth is where the (first) needle starts, as a fraction of the haystack's tokens: 0 is right
after the instruction, 1 is right before the question. Tasks with several target needles
(multi-value, the hops of a chain) spread the rest evenly between that depth and the end.

Haystacks: ``filler`` (RULER's repeated "The grass is green. The sky is blue. ...") and ``prose``
(varied English prose: the paragraphs of ``prose.txt``, shuffled per sample, reshuffled whenever
a long document has used them all).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Iterator, Sequence

CountTokens = Callable[[str], int]

TASKS: tuple[str, ...] = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "vt")
# questions about a real text shipped in a package (bench/realqa.py builds them)
REAL_TASKS: tuple[str, ...] = ("rstqa", "rstqa_raw")
HAYSTACKS: tuple[str, ...] = ("filler", "prose")
DEFAULT_HAYSTACK = {
    "passkey": "filler",
    "niah_single": "prose",
    "niah_multikey": "prose",
    "niah_multivalue": "prose",
    "vt": "filler",
}
# Enough room for the answer: digits are one token each in most small-model vocabularies.
DEFAULT_MAX_NEW_TOKENS = {
    "passkey": 12,
    "niah_single": 16,
    "niah_multikey": 16,
    "niah_multivalue": 48,
    "vt": 32,
}
DEFAULT_DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
          "There and back again.")

INSTRUCTIONS = {
    "passkey": "There is an important info hidden inside a lot of irrelevant text. "
               "Find it and memorize it. I will quiz you about the important information there.",
    "niah": "Some special magic numbers are hidden within the following text. "
            "Make sure to memorize them. I will quiz you about the numbers afterwards.",
    "vt": "Memorize and track the chain(s) of variable assignment hidden in the following text.",
}

# Keys of magic-number needles are "adjective-noun" pairs, as in RULER.
_ADJECTIVES = ("amber", "brave", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy",
               "jolly", "kind", "lively", "mellow", "nimble", "odd", "proud", "quiet", "rapid",
               "silent", "tidy", "upbeat", "vivid", "witty", "young", "zesty", "bitter", "clever",
               "distant", "early", "fierce", "golden", "humble", "ivory", "jagged", "lucky",
               "misty", "noble", "orange", "polite", "rustic")
_NOUNS = ("anchor", "badger", "candle", "dragon", "engine", "falcon", "garden", "harbor", "island",
          "jacket", "kettle", "lantern", "meadow", "needle", "orchid", "pepper", "quartz", "rabbit",
          "saddle", "tunnel", "umbrella", "valley", "walnut", "yogurt", "zipper", "beacon",
          "cactus", "dolphin", "ember", "feather", "glacier", "hammock", "igloo", "jigsaw",
          "kitten", "lemon", "marble", "nutmeg", "otter", "pebble")

_SEPARATOR = " "            # between sentences of a paragraph
_PARAGRAPH = "\n\n"         # between paragraphs


# ----------------------------------------------------------------------------- token counting
def whitespace_counter(text: str) -> int:
    """Tokens = whitespace-separated words (tests, quick dry runs)."""
    return len(text.split())


def byte_counter(text: str) -> int:
    """Tokens = UTF-8 bytes (a byte-level tokenizer without merges)."""
    return len(text.encode("utf-8"))


def hf_token_counter(tokenizer: Any) -> CountTokens:
    """``count_tokens`` for a Hugging Face tokenizer: tokens the engine would see (no special tokens)."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return count


def tolerance(length: int) -> int:
    """How far below ``length`` a sample may fall: one long sentence, or 1% of a long document."""
    return max(64, length // 100)


# ----------------------------------------------------------------------------- haystacks
@lru_cache(maxsize=1)
def prose_paragraphs() -> tuple[tuple[str, ...], ...]:
    """The built-in prose bank: paragraphs of sentences (see ``prose.txt``)."""
    text = resources.files(__package__).joinpath("prose.txt").read_text(encoding="utf-8")
    paragraphs, current = [], []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        if line:
            current.append(line)
        elif current:
            paragraphs.append(tuple(current))
            current = []
    if current:
        paragraphs.append(tuple(current))
    return tuple(paragraphs)


def haystack_units(kind: str, rng: random.Random) -> Iterator[str]:
    """An endless stream of haystack pieces, each a sentence with the separator that follows it.

    Needles are inserted between pieces, so they always land on a sentence boundary.
    """
    if kind == "filler":
        while True:
            for sentence in FILLER:
                yield sentence + _SEPARATOR
    elif kind == "prose":
        paragraphs = list(prose_paragraphs())
        while True:
            rng.shuffle(paragraphs)
            for paragraph in paragraphs:
                for i, sentence in enumerate(paragraph):
                    yield sentence + (_PARAGRAPH if i == len(paragraph) - 1 else _SEPARATOR)
    else:
        raise ValueError(f"unknown haystack {kind!r}; known: {', '.join(HAYSTACKS)}")


# ----------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One question about one generated document."""

    task: str                    # e.g. "niah_single"
    haystack: str                # "filler" | "prose"
    length: int                  # requested tokens (document + continuation)
    depth: float                 # where the (first) needle starts, as a fraction of the haystack
    index: int                   # sample number within (task, haystack, length, depth)
    seed: int                    # the seed this sample was drawn from
    prompt_document: str
    continuation: str
    expected: list[str]          # every one must appear in the first generated line
    max_new_tokens: int
    n_tokens: int = 0            # measured document + continuation tokens
    needles: list[str] = field(default_factory=list)       # the inserted target needle text(s)

    @property
    def label(self) -> str:
        return task_label(self.task, self.haystack)

    @property
    def question(self) -> str:
        """The question alone (the continuation up to its question mark), for the chat path (``ask``)."""
        text = self.continuation.strip()
        end = text.find("?")
        return text[: end + 1] if end >= 0 else text


def task_label(task: str, haystack: str) -> str:
    return f"{task}:{haystack}"


def parse_task(spec: str) -> tuple[str, str]:
    """``"niah_single"`` or ``"niah_single:filler"`` -> (task, haystack)."""
    task, _, haystack = spec.strip().partition(":")
    if task in REAL_TASKS:  # questions about a real text (bench/realqa.py): its haystack is that text
        if haystack not in ("", "rst"):
            raise ValueError(f"task {task!r} reads the reStructuredText specification; no haystack {haystack!r}")
        return task, "rst"
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS + REAL_TASKS)}")
    haystack = haystack or DEFAULT_HAYSTACK[task]
    if haystack not in HAYSTACKS:
        raise ValueError(f"unknown haystack {haystack!r} in {spec!r}; known: {', '.join(HAYSTACKS)}")
    return task, haystack


def sample_seed(seed: int, task: str, haystack: str, length: int, depth: float, index: int) -> int:
    """A stable per-sample seed (independent of which other samples a run asks for)."""
    key = f"{seed}|{task}|{haystack}|{length}|{depth:.6f}|{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def make_sample(task: str, length: int, depth: float, count_tokens: CountTokens, *,
                haystack: str | None = None, seed: int = 0, index: int = 0,
                n_values: int = 4, n_distractors: int = 3, n_hops: int = 4) -> Sample:
    """Generate one sample of ``task`` with ``length`` tokens and its needle at ``depth``."""
    task, haystack = parse_task(f"{task}:{haystack}" if haystack else task)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within [0, 1], got {depth}")
    s = sample_seed(seed, task, haystack, length, depth, index)
    rng = random.Random(s)
    instruction, needles, continuation, expected = _TASK_BUILDERS[task](
        rng, depth, n_values=n_values, n_distractors=n_distractors, n_hops=n_hops)
    document, n_tokens = _fit(instruction, needles, continuation, haystack, rng, length, count_tokens)
    return Sample(task=task, haystack=haystack, length=length, depth=depth, index=index, seed=s,
                  prompt_document=document, continuation=continuation, expected=expected,
                  max_new_tokens=DEFAULT_MAX_NEW_TOKENS[task], n_tokens=n_tokens,
                  needles=[text for d, text, target in needles if target])


# A needle is (depth, text, is_target); builders return instruction, needles, continuation, expected.
Needle = tuple[float, str, bool]


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randrange(10 ** (n - 1), 10 ** n))


def _distinct(rng: random.Random, n: int, draw: Callable[[], str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = draw()
        if v not in out:
            out.append(v)
    return out


def _keys(rng: random.Random, n: int) -> list[str]:
    return _distinct(rng, n, lambda: f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}")


def _spread(depth: float, n: int) -> list[float]:
    """``n`` depths: the first at ``depth``, the rest evenly between it and the end."""
    return [depth + (1.0 - depth) * k / n for k in range(n)]


def _passkey(rng: random.Random, depth: float, **_: int):
    key = _digits(rng, 5)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    return (INSTRUCTIONS["passkey"], [(depth, needle, True)],
            "\n\nWhat is the pass key? The pass key is", [key])


def _magic(key: str, value: str) -> str:
    return f"The special magic number for {key} is {value}."


def _single_question(key: str) -> str:
    return (f"\n\nWhat is the special magic number for {key} mentioned in the provided text? "
            f"The special magic number for {key} mentioned in the provided text is")


def _niah_single(rng: random.Random, depth: float, **_: int):
    key, value = _keys(rng, 1)[0], _digits(rng, 7)
    return INSTRUCTIONS["niah"], [(depth, _magic(key, value), True)], _single_question(key), [value]


def _niah_multikey(rng: random.Random, depth: float, n_distractors: int = 3, **_: int):
    key, *others = _keys(rng, 1 + n_distractors)
    values = _distinct(rng, 1 + n_distractors, lambda: _digits(rng, 7))
    needles = [(depth, _magic(key, values[0]), True)]
    needles += [(rng.random(), _magic(k, v), False) for k, v in zip(others, values[1:])]
    return INSTRUCTIONS["niah"], needles, _single_question(key), [values[0]]


def _niah_multivalue(rng: random.Random, depth: float, n_values: int = 4, **_: int):
    key = _keys(rng, 1)[0]
    values = _distinct(rng, n_values, lambda: _digits(rng, 7))
    needles = [(d, f"One of the special magic numbers for {key} is {v}.", True)
               for d, v in zip(_spread(depth, n_values), values)]
    question = (f"\n\nWhat are all the special magic numbers for {key} mentioned in the provided "
                f"text? The special magic numbers for {key} mentioned in the provided text are")
    return INSTRUCTIONS["niah"], needles, question, values


def _vt(rng: random.Random, depth: float, n_hops: int = 4, **_: int):
    names = _distinct(rng, n_hops + 1,
                      lambda: "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)))
    value = _digits(rng, 5)
    chain = [f"VAR {names[0]} = {value}."]
    chain += [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, n_hops + 1)]
    needles = [(d, s, True) for d, s in zip(_spread(depth, len(chain)), chain)]
    question = (f"\n\nQuestion: Find all variables that are assigned the value {value} in the text "
                f"above. Answer: According to the chain(s) of variable assignment in the text "
                f"above, {len(names)} variables are assigned the value {value}, they are:")
    return INSTRUCTIONS["vt"], needles, question, names


_TASK_BUILDERS = {"passkey": _passkey, "niah_single": _niah_single, "niah_multikey": _niah_multikey,
                  "niah_multivalue": _niah_multivalue, "vt": _vt}


# ----------------------------------------------------------------------------- fitting to a length
def _assemble(instruction: str, units: Sequence[str], counts: Sequence[int],
              needles: Sequence[Needle]) -> str:
    """Instruction, then the haystack units with each needle before the unit at its depth."""
    total = sum(counts)
    at: dict[int, list[str]] = {}
    for depth, text, _target in sorted(needles, key=lambda n: n[0]):
        # First unit boundary whose preceding tokens reach depth x haystack tokens.
        goal, cum, i = depth * total, 0, 0
        while i < len(units) and cum + counts[i] / 2 < goal:
            cum += counts[i]
            i += 1
        at.setdefault(i, []).append(text + _SEPARATOR)
    parts = [instruction, _PARAGRAPH]
    for i, unit in enumerate(units):
        parts.extend(at.get(i, ()))
        parts.append(unit)
    parts.extend(at.get(len(units), ()))
    return "".join(parts).rstrip()


def _fit(instruction: str, needles: Sequence[Needle], continuation: str, haystack: str,
         rng: random.Random, length: int, count_tokens: CountTokens) -> tuple[str, int]:
    """The document whose tokens plus the continuation's are in [length - tolerance, length]."""
    stream = haystack_units(haystack, rng)
    units: list[str] = []
    counts: list[int] = []
    unit_tokens: dict[str, int] = {}

    def prefix(n_tokens: int) -> int:
        """The longest prefix of the stream whose estimated tokens stay within n_tokens."""
        total, n = 0, 0
        while True:
            if n == len(units):
                unit = next(stream)
                if unit not in unit_tokens:   # mid-text, a sentence follows whitespace
                    unit_tokens[unit] = count_tokens(" " + unit.strip())
                units.append(unit)
                counts.append(unit_tokens[unit])
            if total + counts[n] > n_tokens:
                return n
            total += counts[n]
            n += 1

    fixed = count_tokens(continuation)
    empty = count_tokens(_assemble(instruction, [], [], needles)) + fixed
    if empty > length:
        raise ValueError(f"length {length} is too short: instruction, needles and question "
                         f"alone take {empty} tokens")
    lo = length - tolerance(length)
    error = 0                         # measured minus estimated tokens (merges across units)
    best: tuple[str, int] | None = None
    for _ in range(8):
        n = prefix(length - empty - error)
        doc = _assemble(instruction, units[:n], counts[:n], needles)
        total = count_tokens(doc) + fixed
        if lo <= total <= length:
            return doc, total
        if total <= length and (best is None or total > best[1]):
            best = (doc, total)
        error = total - empty - sum(counts[:n])
    if best is None:
        raise RuntimeError(f"could not fit a {haystack} document into {length} tokens")
    return best


# ----------------------------------------------------------------------------- scoring
def first_line(output: str) -> str:
    """The first non-empty line of a generation, stripped."""
    for line in output.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _found(value: str, text: str) -> bool:
    """``value`` appears as a whole token (not inside a longer number or word)."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", text) is not None


def score(output: str, expected: Sequence[str]) -> dict[str, Any]:
    """Exact match of every expected value in the first generated line.

    Returns ``correct`` (all present), ``recall`` (fraction present) and the ``first_line`` judged.
    """
    line = first_line(output)
    hits = sum(_found(v, line) for v in expected)
    return {"correct": bool(expected) and hits == len(expected),
            "recall": hits / len(expected) if expected else 0.0,
            "first_line": line}
