"""Real-document QA (bench/realqa.py): the question set checked against the text pyperformance ships,
windows that hold the answer, normalized-match scoring, and the `rstqa` task in `bench quality`."""

from __future__ import annotations

import importlib.util
import re
from types import SimpleNamespace

import pytest

from actqkv_llm.bench import quality, realqa
from actqkv_llm.bench import tasks as T
from actqkv_llm.bench.realqa import Question

needs_text = pytest.mark.skipif(importlib.util.find_spec("pyperformance") is None,
                                reason="needs the text: pip install --no-deps pyperformance==1.14.0")
words = T.whitespace_counter

# A synthetic "book": numbered paragraphs with a fact in three of them.
PARAS = [f"Paragraph {i}. " + " ".join(f"w{i}x{j}" for j in range(30)) for i in range(60)]
PARAS[3] += " The lighthouse keeper is called Morwenna Tregarthen."
PARAS[31] += " The ferry leaves at half past seven."
PARAS[58] += " The tin box holds a brass key."
BOOK = "\n\n".join(PARAS)
BOOK_QS = (
    Question("Who keeps the lighthouse?", ("Morwenna Tregarthen", "Morwenna"), "keeper is called Morwenna Tregarthen"),
    Question("When does the ferry leave?", ("half past seven",), "The ferry leaves at half past seven."),
    Question("What does the tin box hold?", ("brass key", "key"), "The tin box holds a brass key."),
)


# ------------------------------------------------------------------------------------ scoring
@pytest.mark.parametrize("output, answers, correct", [
    ("It was written by David  Goodger.", ("David Goodger",), True),
    ("The answer is CASE INSENSITIVE", ("case-insensitive",), True),
    ("case‐insensitive", ("case-insensitive",), True),          # a Unicode hyphen
    ("There are 96 pixels per inch.", ("96",), True),
    ("There are 960 pixels.", ("96",), False),                   # not inside a longer number
    ("the Swedes", ("Swedish",), False),
    ("Docutils 0.3.8", ("0.3.8",), True),
    ("Docutils 0.3.81", ("0.3.8",), False),
    ("", ("x",), False),
])
def test_normalized_match(output, answers, correct):
    assert realqa.score(output, answers)["correct"] is correct


# ------------------------------------------------------------------------------------ windows
def test_a_window_holds_the_evidence_fits_and_keeps_its_depth():
    for q in BOOK_QS:
        at = realqa.evidence_offset(BOOK, q)
        doc = realqa.window(BOOK, at, 400, words)
        assert q.evidence in doc and words(doc) <= 400 and words(doc) > 300
        assert doc.startswith("Paragraph ")  # cut on paragraph boundaries
        rel_book, rel_doc = at / len(BOOK), doc.index(q.evidence) / len(doc)
        assert abs(rel_book - rel_doc) < 0.25
    assert realqa.window(BOOK, 10, 10_000, words) == BOOK  # it all fits: the whole text


def test_qa_samples_for_both_layouts():
    s = realqa.make_qa_sample("rstqa", 500, 1, words, text=BOOK, questions=BOOK_QS)
    assert s.task == "rstqa" and s.label == "rstqa:rst" and s.expected == ["half past seven"]
    assert "ferry leaves" in s.prompt_document and s.n_tokens <= 500
    assert s.continuation.startswith("When does the ferry leave?")
    assert 0.4 < s.depth < 0.6
    raw = realqa.make_qa_sample("rstqa_raw", 500, 2, words, text=BOOK, questions=BOOK_QS)
    assert raw.continuation.endswith("Answer:") and "brass key" in raw.prompt_document
    with pytest.raises(ValueError, match="unknown real-document task"):
        realqa.make_qa_sample("passkey", 500, 0, words, text=BOOK, questions=BOOK_QS)


def test_verify_reports_missing_evidence_and_answers():
    bad = (Question("q?", ("moon",), "The ferry leaves at half past seven."),
           Question("q?", ("x",), "not in the book"))
    problems = realqa.verify(BOOK, bad)
    assert len(problems) == 2 and "answer 'moon'" in problems[0] and "evidence not in the text" in problems[1]
    assert realqa.verify(BOOK, BOOK_QS) == []


def test_task_names_parse():
    assert T.parse_task("rstqa") == ("rstqa", "rst") and T.parse_task("rstqa_raw:rst") == ("rstqa_raw", "rst")
    with pytest.raises(ValueError):
        T.parse_task("rstqa:filler")


# ------------------------------------------------------------------------------------ bench quality
class Reader:
    """A fake engine that answers a question when its evidence is in what it read. ``streaming``
    reads only the last ``window`` words of the document."""

    model_id, device, dtype, tokenizer, native_window = "fake/reader", "cpu", "float32", None, 8192

    def __init__(self, method="full", questions=BOOK_QS, window=120, log=None):
        self.method, self.questions, self.window = method, questions, window
        self.log = [] if log is None else log
        self.config = SimpleNamespace(to_dict=lambda: {"method": self.method})

    def with_method(self, method, **options):
        return Reader(method, self.questions, self.window, self.log)

    def prefill(self, text, chat=True, progress=None):
        self.log.append((self.method, chat))
        if self.method == "streaming":
            text = " ".join(text.split()[-self.window:])
        return SimpleNamespace(text=" ".join(text.split()), n_tokens=len(text.split()))

    def _reply(self, doc, prompt):
        for q in self.questions:
            if q.question in prompt:
                return f"I think {q.answers[0]}." if " ".join(q.evidence.split()) in doc.text else "No idea."
        raise AssertionError(prompt)

    def ask(self, doc, question, **sampling):
        return self._reply(doc, question)

    def generate(self, doc, continuation, **sampling):
        return self._reply(doc, continuation)


@pytest.mark.parametrize("task, chat", [("rstqa", True), ("rstqa_raw", False)])
def test_bench_quality_runs_every_question_once_per_length(tmp_path, monkeypatch, task, chat):
    monkeypatch.setattr(realqa, "QUESTIONS", BOOK_QS)
    monkeypatch.setattr(realqa, "load_text", lambda: BOOK)
    log: list = []
    summary = quality.run_quality(tmp_path, tasks=[task], lengths=[300, 2000], methods=["full", "streaming"],
                                  engine=Reader(log=log), count_tokens=words, progress=False,
                                  plots=task == "rstqa", command="test")
    assert summary["n_results"] == 2 * 2 * len(BOOK_QS) and {c for _, c in log} == {chat}
    assert summary["overall"]["full"]["accuracy"] == 1.0
    # streaming reads only the end: it finds the last fact, and the others only when the window is short
    assert summary["by_length"]["streaming"][f"{task}:rst"]["2000"]["accuracy"] == pytest.approx(1 / 3)
    depths = sorted(float(d) for d in summary["by_depth"]["full"][f"{task}:rst"]["2000"])
    assert depths == [0.125, 0.625, 0.875]  # by quarter of the text
    records = [r for r in quality.ResultsLog(tmp_path / quality.RESULTS).load().values()]
    assert len({r["depth"] for r in records}) == 3 and min(r["depth"] for r in records) < 0.1  # exact depths kept
    report = (tmp_path / "results.md").read_text()
    assert f"## {task}:rst" in report and "normalized match" in report


# ------------------------------------------------------------------------------------ the real text
@needs_text
def test_every_question_checks_out_in_the_installed_text():
    text = realqa.load_text()
    assert realqa.verify(text) == []
    assert len(realqa.QUESTIONS) >= 30 and len({q.question for q in realqa.QUESTIONS}) == len(realqa.QUESTIONS)
    quarters = [0, 0, 0, 0]
    for q in realqa.QUESTIONS:
        quarters[min(3, int(realqa.depth(text, q) * 4))] += 1
    assert min(quarters) >= 5, quarters  # start, middle and end all asked about
    assert "reStructuredText Markup Specification" in text[:300] and len(text) > 100_000


@needs_text
def test_real_windows_hold_every_answer():
    text = realqa.load_text()
    for i, q in enumerate(realqa.QUESTIONS):
        s = realqa.make_qa_sample("rstqa", 3000, i, words, text=text)
        assert s.n_tokens <= 3000
        assert re.search(r"\s+".join(map(re.escape, q.evidence.split())), s.prompt_document), q.question


def test_a_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pyperformance" else real(n, *a))
    with pytest.raises(Exception, match=r"pip install --no-deps pyperformance==1\.14\.0"):
        realqa.text_path()
