"""Rebuild the tiny evaluation set shipped with the cookbook (the files beside this script).

- ``tiny_corpus.jsonl``: BEIR-style documents (``_id``, ``title``, ``text``): the docstring
  chunks of ``_shared.stdlib_corpus()`` as this Python printed them when the set was made.
- ``tiny_queries.jsonl``: ``_id``, ``text``: questions a Python programmer might ask.
- ``tiny.qrels``: TREC qrels (``qid 0 docid grade``), graded by hand: 2 answers the question,
  1 helps with part of it, 0 judged not relevant.
- ``tiny.run``: TREC run (``qid Q0 docid rank score tag``): BM25's top 10 for each query.

Run ``python cookbook/data/make_tiny.py`` only to change the set; the files are committed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _shared import BM25, stdlib_corpus  # noqa: E402

QUERIES = {
    "q1": (
        "How do I serialize a Python object to a JSON string?",
        {"json.dumps#0": 2, "json.dumps#2": 1, "json.dumps#3": 1, "json.loads#0": 0},
    ),
    "q2": (
        "How do I run an external program and get what it prints?",
        {"subprocess.check_output#0": 2, "subprocess.run#0": 2, "subprocess.check_output#2": 1, "shlex.split#0": 0},
    ),
    "q3": (
        "How can I delete a folder and everything inside it?",
        {"shutil.rmtree#0": 2, "os.makedirs#0": 0, "tempfile.mkdtemp#0": 0},
    ),
    "q4": (
        "How do I time how long my code takes?",
        {"time.perf_counter#0": 2, "time.sleep#0": 0, "datetime.timedelta#0": 0},
    ),
    "q5": (
        "How do I count how often each word appears in a list?",
        {
            "collections.Counter#0": 2,
            "collections.Counter#1": 1,
            "collections.Counter#2": 1,
            "collections.defaultdict#0": 1,
            "str.split#0": 1,
        },
    ),
    "q6": (
        "How can I get the k largest items of a list efficiently?",
        {"heapq.nlargest#0": 2, "sorted#0": 1, "list.sort#0": 1, "reversed#0": 0},
    ),
    "q7": (
        "How do I split a command line string the way a shell does?",
        {"shlex.split#0": 2, "str.split#0": 0, "subprocess.run#0": 0},
    ),
    "q8": ("How do I cache the results of an expensive function?", {"functools.lru_cache#0": 2, "hashlib.sha256#0": 0}),
    "q9": (
        "How do I create a temporary directory?",
        {"tempfile.mkdtemp#0": 2, "os.makedirs#0": 1, "shutil.rmtree#0": 0},
    ),
    "q10": (
        "How do I check whether two floats are approximately equal?",
        {"math.isclose#0": 2, "statistics.median#0": 0},
    ),
}


def main() -> None:
    chunks = stdlib_corpus()
    ids = {c.id for c in chunks}
    with (HERE / "tiny_corpus.jsonl").open("w", encoding="utf-8") as out:
        for c in chunks:
            text = c.text.removeprefix(f"{c.source}: ")
            out.write(json.dumps({"_id": c.id, "title": c.source, "text": text}, ensure_ascii=False) + "\n")
    index = BM25(chunks)
    with (
        (HERE / "tiny_queries.jsonl").open("w") as queries,
        (HERE / "tiny.qrels").open("w") as qrels,
        (HERE / "tiny.run").open("w") as run,
    ):
        for qid, (text, grades) in QUERIES.items():
            queries.write(json.dumps({"_id": qid, "text": text}) + "\n")
            for doc, grade in grades.items():
                assert doc in ids, doc
                qrels.write(f"{qid} 0 {doc} {grade}\n")
            for rank, (chunk, score) in enumerate(index.search(text, 10), start=1):
                run.write(f"{qid} Q0 {chunk.id} {rank} {score:.4f} bm25\n")


if __name__ == "__main__":
    main()
