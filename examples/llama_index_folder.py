"""A LlamaIndex query engine over a folder of documents, each read once and cached on disk.

    python examples/llama_index_folder.py                 # examples/data/folder
    python examples/llama_index_folder.py my_texts/ -q "Who built it?"

Each document is prefilled by the embedded model (no chunking, no embeddings) and stored in the
engine's disk cache under the hash of its text and the model's fingerprint. Run it twice: the
second run (a new process) loads every document from the cache instead of reading it again, and
says so. Set ACTQKV_CACHE_DIR to keep the cache somewhere else.

A query first picks the documents relevant to the question (a cheap lexical pass), then answers
once, on the most relevant one, with passages from the others.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llama_index.core import SimpleDirectoryReader

from llama_index.llms.actqkv import ActQKVQueryEngine

HERE = Path(__file__).resolve().parent
DEFAULT_FOLDER = HERE / "data" / "folder"
QUESTION_ALL = "Who built the observatory, and who planted the orchard? Answer with names."
QUESTION_ONE = ("lighthouse.txt", "How many steps does the spiral stair of the lighthouse have?")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER, help="a folder of text files")
    parser.add_argument("-q", "--question", default=QUESTION_ALL, help="asked of the folder")
    parser.add_argument("--max-tokens", type=int, default=32, help="most tokens per answer")
    args = parser.parse_args(argv)

    docs = SimpleDirectoryReader(str(args.folder), required_exts=[".txt"], filename_as_id=True).load_data()
    t0 = time.perf_counter()
    qe = ActQKVQueryEngine(docs, max_tokens=args.max_tokens)
    for entry in qe.documents:
        how = "cache hit (loaded from disk)" if entry.from_cache else "cache miss (prefilled now, saved)"
        print(f"{entry.label}: {entry.document.n_tokens} tokens, {how}, {entry.seconds:.1f}s")
    hits = sum(e.from_cache for e in qe.documents)
    print(f"cache: {hits}/{len(qe.documents)} documents reused; ready in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    response = qe.query(args.question)
    picked = ", ".join(f"{d['label']} ({d['score']:.1f})" for d in response.metadata["documents"])
    print(f"\nQ (the folder): {args.question}\ndocuments picked: {picked}")
    print(f"{response}   ({time.perf_counter() - t0:.1f}s)")
    print("sources:")
    for n in response.source_nodes[:6]:
        m = n.node.metadata
        score = "whole document" if n.score is None else f"score {n.score:.2f}"
        print(f"  {m.get('file_name', m['doc_id'])} tokens {m['start_token']}-{m['end_token']} ({score}): "
              f"{' '.join(n.node.get_content().split())[:70]}")

    name, question = QUESTION_ONE
    one = next((e for e in qe.documents if e.label == name), None)
    if one is not None and args.folder == DEFAULT_FOLDER:
        t0 = time.perf_counter()
        response = qe.for_document(one.doc_id).query(question)
        print(f"\nQ ({name} only): {question}\n{str(response).strip()}   ({time.perf_counter() - t0:.1f}s)")
        for n in response.source_nodes[:2]:
            print(f"  tokens {n.node.metadata['start_token']}-{n.node.metadata['end_token']} "
                  f"(score {n.score:.2f}): {' '.join(n.node.get_content().split())[:70]}")


if __name__ == "__main__":
    main()
