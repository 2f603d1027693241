"""``geomsweep-index CORPUS OUT [--tokenizer T]``: an infini-gram index of a local corpus, for
``eval.memorization.engine=local eval.memorization.index=OUT``.

CORPUS is a JSON Lines file (one document per line, in ``--field``), a ``.txt`` file (one document), or a folder of
them. Without ``--tokenizer`` the index holds raw UTF-8 bytes; with one (a model folder or hub name transformers can
load) it holds that tokenizer's ids, so the ∞-gram and a model speak the same tokens.
"""

from __future__ import annotations

import argparse
import sys
import time

from transformers import AutoTokenizer

from geomsweep.sources.corpus_index import BYTES, CorpusIndexError, build_index, read_corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="geomsweep-index", description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", help="a .jsonl or .txt file, or a folder of them")
    parser.add_argument("out", help="the index folder to write (replaced if it exists)")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder or hub name (default: raw bytes)")
    parser.add_argument("--field", default="text", help="the JSON Lines field holding each document")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
        info = build_index(read_corpus(args.corpus, args.field), args.out, tokenizer, args.tokenizer or BYTES)
    except (CorpusIndexError, OSError, ValueError) as err:
        sys.exit(f"geomsweep-index: {err}")
    print(
        f"geomsweep-index: {info.documents} documents, {info.tokens} tokens ({info.tokenizer}, {info.token_dtype}) "
        f"indexed into {args.out} in {time.perf_counter() - started:.1f} s; use it with "
        f"eval.memorization.engine=local eval.memorization.index={args.out}"
    )


if __name__ == "__main__":
    main()
