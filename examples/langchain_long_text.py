"""Ask questions about a long text file through a LangChain chain, on the embedded model, offline.

    python examples/langchain_long_text.py                       # the bundled Harrowmere Chronicle
    python examples/langchain_long_text.py book.txt -q "Who is the narrator?" --max-tokens 64

The text is read once (prefilled into block memory, and cached on disk: a second run starts
answering at once); every question then runs on its own copy of that state. Runs on a CPU in
well under a minute for the bundled text (the first run also converts the embedded model once).
A 0.5B-parameter model answers short factual questions, not always correctly: swap in a larger
local model with ChatActQKV(model="path/to/model") for better answers.
Set ACTQKV_CACHE_DIR to keep the disk cache somewhere else.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_actqkv import ChatActQKV

HERE = Path(__file__).resolve().parent
DEFAULT_TEXT = HERE / "data" / "harrowmere_chronicle.txt"
QUESTIONS = [
    "Who was the keeper of Lock Number One?",
    "How many days did the great freeze last?",
    "Who rang the Guildhall bell on the night of the ropewalk fire?",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_TEXT, help="a UTF-8 text file")
    parser.add_argument("-q", "--question", action="append", help="a question (repeatable)")
    parser.add_argument("--max-tokens", type=int, default=40, help="most tokens per answer")
    args = parser.parse_args(argv)
    questions = args.question or QUESTIONS

    llm = ChatActQKV(document_path=args.path, max_tokens=args.max_tokens)
    # the document sits before the first user turn; the question follows it
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    chain = prompt | llm | StrOutputParser()

    # both steps are optional: the first question would do them anyway
    t0 = time.perf_counter()
    eng = llm.get_engine()
    print(f"Model {eng.model_id} loaded in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    doc = llm.get_document()
    how = "loaded from the disk cache" if getattr(doc, "manifest", None) is not None else "prefilled"
    print(f"Read {args.path.name}: {doc.n_tokens} tokens, {doc.n_blocks} memory blocks, {how} "
          f"in {time.perf_counter() - t0:.1f}s")

    for q in questions[:-1]:
        t0 = time.perf_counter()
        answer = chain.invoke({"question": q})
        print(f"\nQ: {q}\nA: {answer.strip()}   ({time.perf_counter() - t0:.1f}s)")

    # the last question streams token by token, and shows what retrieval attended to
    q = questions[-1]
    print(f"\nQ: {q}\nA: ", end="", flush=True)
    full = None
    for chunk in (prompt | llm).stream({"question": q}):
        print(chunk.content, end="", flush=True)
        full = chunk if full is None else full + chunk
    usage = full.usage_metadata
    print(f"\n   [{usage['output_tokens']} tokens generated; {usage['input_token_details']['cache_read']} "
          f"document tokens reused from the prefilled state; finish: {full.response_metadata['finish_reason']}]")
    for s in full.response_metadata["sources"][:3]:
        snippet = " ".join(s["text"].split())
        print(f"   source tokens {s['start']}-{s['end']} (score {s['score']:.2f}): {snippet[:90]}")


if __name__ == "__main__":
    main()
