"""Real-document question answering: questions about a long text nobody here wrote.

The text is the *reStructuredText Markup Specification* (David Goodger, placed in the public domain),
117 KB, about 30K tokens, which the PyPI package ``pyperformance`` ships as benchmark data:

    pip install --no-deps pyperformance==1.14.0

(``--no-deps``: only its data files are read; nothing of it is imported.) Each question's answer is a
short string found in the text; :func:`verify` checks every question against the installed text
(the evidence sentence occurs, and the first accepted answer occurs in it).

A sample for length L is a window of the text of at most L tokens (document + question) that holds
the question's evidence, cut on paragraph boundaries and placed so the evidence sits at about the
same relative depth as in the whole text (all of the text when it fits). Tasks:

- ``rstqa``: chat layout, as ``actqkv ask`` does it (``eng.prefill(text)`` then ``eng.ask``);
- ``rstqa_raw``: raw completion (``"Question: ...\\nAnswer:"`` after the document), for base models.

Scoring is a normalized match: lower case, hyphens as spaces, whitespace collapsed; a sample is
correct when any accepted answer occurs in the answer text (not inside a longer word or number).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ModelNotFoundError
from .tasks import REAL_TASKS, Sample

PACKAGE = "pyperformance"
REQUIREMENT = "pyperformance==1.14.0"
INSTALL = f"pip install --no-deps {REQUIREMENT}"
TEXT_PATH = "data-files/benchmarks/bm_docutils/data/docs/ref/rst/restructuredtext.txt"
TEXT_TITLE = "reStructuredText Markup Specification (public domain; shipped by pyperformance 1.14.0)"

CHAT_TASKS: frozenset[str] = frozenset({"rstqa"})
MAX_NEW_TOKENS = 48
SYSTEM_HINT = "Answer in a few words, using the document above."


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]   # accepted answers; the first one occurs in ``evidence``
    evidence: str              # a passage of the text (whitespace-insensitive) holding the answer


QUESTIONS: tuple[Question, ...] = (
    # ---- the first quarter
    Question("Who is the author of the reStructuredText Markup Specification?",
             ("David Goodger", "Goodger"), ":Author: David Goodger"),
    Question("In the quick syntax overview, who is the example block quote attributed to?",
             ("Anne Elk",), "-- Anne Elk (Miss)"),
    Question("In the quick syntax overview, by at least how many spaces must a footnote's body be indented?",
             ("3", "three"), "consistently indented by at least 3 spaces"),
    Question("Tab stops are at every which column?",
             ("8th", "eighth", "8"), "Tab stops are at every 8th column"),
    Question("Which character does reStructuredText use as its escaping character?",
             ("backslash", "\\"), "In reStructuredText we use the *backslash*"),
    Question("In the field list example with a very long field name, the number of what is required "
             "to carry a coconut?",
             ("African swallows", "swallows"), ":Number-of-African-swallows-required-to-carry-a-coconut:"),
    Question("How many levels of section titles does HTML have?",
             ("6", "six"), "(HTML has 6 levels)"),
    Question("Which edition of The Chicago Manual of Style is quoted about transitions?",
             ("14th", "fourteenth"), "(The Chicago Manual of Style, 14th edition, section 1.80)"),
    Question("How many repeated punctuation characters, at least, make a transition marker?",
             ("4", "four"), "a horizontal line of 4 or more repeated punctuation characters"),
    Question("Which HTML element would be an obvious choice to render a transition?",
             ("hr", "horizontal rule"), "horizontal rules (``<hr>``) in HTML output"),
    Question("What is the largest uppercase Roman numeral an enumerated list can use?",
             ("MMMMCMXCIX", "4999"), "MMMMCMXCIX (4999)"),
    Question("In which Docutils version were auto-enumerated lists new?",
             ("0.3.8",), "(Auto-enumerated lists are new in Docutils 0.3.8.)"),
    # ---- the second quarter
    Question("Which system for describing and enforcing a Python object schema uses the classifier "
             "syntax of definition lists?", ("Grouch",), "classifier syntax of Grouch_"),
    Question("Field lists are modeled on the headers of which RFC?",
             ("RFC822", "RFC 822", "822"), "modeled on RFC822_ headers"),
    Question("Are field names case-sensitive or case-insensitive when further processed?",
             ("case-insensitive", "insensitive"), "Field names are case-insensitive when further processed"),
    Question("In which language, given as an example, is there no singular/plural distinction between "
             "Author and Authors?", ("Swedish",), "(e.g. Swedish), there is no singular/plural distinction"),
    Question("What does RCS stand for?",
             ("Revision Control System",), ".. [#] Revision Control System."),
    Question("What does CVS stand for?",
             ("Concurrent Versions System",), ".. [#] Concurrent Versions System."),
    Question("The syntax of POSIX options in option lists is based on which Python module?",
             ("getopt",), "supported by Python's getopt.py_ module"),
    Question("How many spaces at least must separate an option from its description in an option list?",
             ("two", "2"), "There must be at least two spaces between the option(s) and the description"),
    Question("What do old GNU-style options begin with?",
             ("plus", "+"), 'Old GNU-style "plus" options consist of one plus and an option letter'),
    Question("In which Docutils version were line blocks new?",
             ("0.3.5",), "(New in Docutils 0.3.5.)"),
    # ---- the third quarter
    Question("What prefix begins each line of a line block?",
             ("vertical bar", "|", "pipe"), 'groups of lines beginning with vertical bar ("|") prefixes'),
    Question("What begins a doctest block?",
             (">>>",), 'Doctest blocks are text blocks which begin with ``">>> "``'),
    Question("Which Emacs mode is a tool for editing grid tables?",
             ("table mode",), "The `Emacs table mode`_ is a tool that allows easy editing of grid tables"),
    Question("In a grid table, which character is used for the intersections of horizontal and vertical lines?",
             ("plus", "+"), 'The plus sign ("+") is used for intersections'),
    Question("In a grid table, which character may separate the header rows from the table body?",
             ("equals", "="), 'The equals sign ("=") may be used to separate optional header rows'),
    Question("Which Unicode code point does the list of footnote symbols give for the pilcrow?",
             ("U+000B6", "000B6", "B6"), 'pilcrow or paragraph mark ("&para;"/U+000B6)'),
    Question("What is the directive type together with its two colons and whitespace called?",
             ("directive marker",), '(together called the "directive marker")'),
    Question("What level of system message does an unrecognized directive generate?",
             ("level-3", "level 3", "error", "3"), "a level-3 (error) system message is generated"),
    Question("In the substitution example, which symbol must be used on containers used to dispose of "
             "medical waste?", ("biohazard",), "The |biohazard| symbol must be used on containers"),
    Question("How many types of hyperlink targets are there?",
             ("three", "3"), "There are three types of hyperlink targets: internal, external, and indirect."),
    Question("After the explicit markup start, what do anonymous hyperlink targets have where named "
             "targets have an underscore and a reference name?", ("two underscores", "__"),
             '(".. "), two underscores, a colon, whitespace, and a link block; there is no reference name'),
    Question("Substitution definitions are the equivalent of what in SGML/XML?",
             ("named entities", "entities"),
             "They are the equivalent of SGML/XML's named entities or programming language macros."),
    Question("What is an explicit markup start followed by a blank line and nothing else called?",
             ("empty comment",), 'is an "_`empty comment`"'),
    Question("What level of system message is inserted when duplicate explicit hyperlink targets are removed?",
             ("level-2", "level 2", "warning", "2"),
             "Duplicate explicit hyperlink targets are removed, and level-2 (warning) system messages"),
    # ---- the last quarter
    # not a bare "`": chat models put backticks around any code they quote, so it matched wrong answers
    Question("What characters enclose interpreted text?",
             ("backquote", "backtick", "back quote"), "Interpreted text is enclosed by single backquote characters"),
    Question("Text enclosed by double-backquotes is treated as what?",
             ("inline literals", "inline literal", "literal"),
             "Text enclosed by double-backquotes is treated as inline literals"),
    Question("The trailing underscore of a hyperlink reference can be thought of as what?",
             ("right-pointing arrow", "arrow"), "The underscore can be thought of as a right-pointing arrow."),
    Question("Since which Docutils version can a hyperlink reference embed another hyperlink reference "
             "within angle brackets?", ("0.11",), "Docutils 0.11) a hyperlink reference within angle brackets"),
    Question("What are hyperlinks whose reference and target are both anonymous, and whose target "
             "cannot be referred to again, called?", ("one-off", "one off"), '"one-off" hyperlinks'),
    Question("How many inline markup constructs are there?",
             ("nine", "9"), "There are nine inline markup constructs."),
    Question("Which Unicode version does Docutils 0.13 use?",
             ("5.2.0", "5.2"), "Docutils 0.13 uses `Unicode version 5.2.0`_."),
    Question("What percentage of non-markup uses of markup characters were the inline markup "
             "recognition rules devised to allow?", ("90%", "90"),
             "The inline markup recognition rules were devised to allow 90% of non-markup"),
    Question("How many pixels are in one inch?",
             ("96",), "in (inches; 1 in = 2.54 cm = 96 px)"),
    Question("How many points make one pica?",
             ("12",), "pc (picas; 1 pc = 1/6 in = 12 pt)"),
    Question("In LaTeX, what is the default size of one px?",
             ("1/72 in", "1/72"), "In LaTeX, the default definition is 1 px = 1/72 in"),
    Question("Which PEP specifies how markup errors are handled?",
             ("258", "PEP 258"), "Markup errors are handled according to the specification in `PEP 258`_."),
)


# ----------------------------------------------------------------------------- the text
def text_path() -> Path:
    """The specification inside the installed ``pyperformance`` (located, never imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            path = Path(location) / TEXT_PATH
            if path.is_file():
                return path
    raise ModelNotFoundError(f"the real-document QA set reads the reStructuredText specification that "
                             f"the PyPI package pyperformance ships; install it: {INSTALL}")


@lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int) -> str:
    text = Path(path).read_text(encoding="utf-8")
    problems = verify(text)
    if problems:  # another version of the text: refuse rather than score against the wrong answers
        raise ModelNotFoundError(f"{path} does not match the QA set ({len(problems)} problem(s), first: "
                                 f"{problems[0]}); install the version it was written for: {INSTALL}")
    return text


def load_text() -> str:
    """The specification's text, checked against every question (read once per file version)."""
    path = text_path()
    return _read(str(path), path.stat().st_mtime_ns)


def normalize(text: str) -> str:
    """Lower case, hyphens and dashes as spaces, straight quotes, whitespace collapsed."""
    text = text.lower().replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = re.sub(r"[-\u2010-\u2015]", " ", text)
    return " ".join(text.split())


def _occurs(answer: str, text: str) -> bool:
    """Normalized ``answer`` in normalized ``text``, not inside a longer word or number."""
    a = normalize(answer)
    return re.search(rf"(?<![0-9a-z]){re.escape(a)}(?![0-9a-z])", normalize(text)) is not None


def evidence_offset(text: str, q: Question) -> int:
    """Character offset of the question's evidence in ``text`` (whitespace-insensitive); -1 if absent."""
    words = q.evidence.split()
    pattern = r"\s+".join(re.escape(w) for w in words)
    m = re.search(pattern, text)
    return -1 if m is None else m.start()


def verify(text: str, questions: Sequence[Question] | None = None) -> list[str]:
    """Problems with the question set against ``text`` (empty when every question checks out)."""
    questions = QUESTIONS if questions is None else questions
    problems = []
    for i, q in enumerate(questions):
        at = evidence_offset(text, q)
        if at < 0:
            problems.append(f"question {i}: evidence not in the text: {q.evidence!r}")
        elif not _occurs(q.answers[0], q.evidence):
            problems.append(f"question {i}: answer {q.answers[0]!r} is not in its evidence {q.evidence!r}")
    return problems


def depth(text: str, q: Question) -> float:
    """Where the evidence sits in the whole text, as a fraction."""
    return round(evidence_offset(text, q) / len(text), 4)


# ----------------------------------------------------------------------------- scoring
def score(output: str, answers: Sequence[str]) -> dict[str, Any]:
    """Correct when any accepted answer occurs (normalized) in the output."""
    hit = any(_occurs(a, output) for a in answers)
    return {"correct": hit, "recall": 1.0 if hit else 0.0, "first_line": output.strip()[:200]}


# ----------------------------------------------------------------------------- samples
def continuation(q: Question, chat: bool) -> str:
    """What follows the document: the chat question, or the raw completion prompt."""
    if chat:
        return f"{q.question} {SYSTEM_HINT}"
    return f"\n\nQuestion: {q.question}\nAnswer:"


def window(text: str, at: int, budget: int, count_tokens: Callable[[str], int]) -> str:
    """The longest run of whole paragraphs around offset ``at`` that fits ``budget`` tokens, placed
    so ``at`` keeps about its relative depth; the whole text when it fits."""
    if count_tokens(text) <= budget:
        return text
    bounds = [0] + [m.end() for m in re.finditer(r"\n\s*\n", text)] + [len(text)]
    rel = at / len(text)

    def cut(n_chars: int) -> str:
        start = max(0, min(at - int(rel * n_chars), len(text) - n_chars))
        end = start + n_chars
        s = max(b for b in bounds if b <= start)
        e = min((b for b in bounds if b >= end), default=len(text))
        if not s <= at < e:
            return ""
        return text[s:e]

    lo, hi, best = 1, len(text), ""
    for _ in range(24):  # binary search on the character span
        if lo > hi:
            break
        mid = (lo + hi) // 2
        piece = cut(mid)
        if piece and count_tokens(piece) <= budget:
            best, lo = piece, mid + 1
        else:
            hi = mid - 1
    if not best:
        raise ValueError(f"no window of {budget} tokens holds the evidence at offset {at}")
    return best.strip()


def make_qa_sample(task: str, length: int, index: int, count_tokens: Callable[[str], int],
                   text: str | None = None, questions: Sequence[Question] | None = None):
    """The ``index``-th question of ``task`` (``rstqa`` or ``rstqa_raw``) in a window of ``length`` tokens."""
    if task not in REAL_TASKS:
        raise ValueError(f"unknown real-document task {task!r}; known: {', '.join(REAL_TASKS)}")
    text = load_text() if text is None else text
    q = (QUESTIONS if questions is None else questions)[index]
    chat = task in CHAT_TASKS
    cont = continuation(q, chat)
    budget = length - count_tokens(cont)
    doc = window(text, evidence_offset(text, q), budget, count_tokens)
    return Sample(task=task, haystack="rst", length=length, depth=depth(text, q), index=index, seed=0,
                  prompt_document=doc, continuation=cont, expected=list(q.answers),
                  max_new_tokens=MAX_NEW_TOKENS, n_tokens=count_tokens(doc) + count_tokens(cont),
                  needles=[q.evidence])


def is_real_task(spec: str) -> bool:
    return spec.split(":", 1)[0] in REAL_TASKS
