"""Choose TfidfIntentClassifier's settings by cross-validation on the training data only (issue 8).

Never reads the held-out set: each candidate (n-gram ranges, analyzer, C) is scored by seeded
stratified 3-fold cross-validation on `data/nlu` (Rasa's loader, as the classifier trains), and the
table is printed best first (macro-F1 over all intents, accuracy, fit seconds per fold). The
winner becomes the component's defaults; the held-out set then confirms it (`nlu_tune.py`).

Usage (Rasa venv: scikit-learn lives there):
    nice -n 15 .venv-rasa/bin/python benchmarks/tfidf_search.py [--folds 3] [--jobs 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nlu_peers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: (word n-gram range, char analyzer, char n-gram range, C); the first row is the TF-IDF peer's.
CANDIDATES = [
    ((1, 2), "char_wb", (2, 5), 10.0),
    ((1, 2), "char_wb", (2, 5), 3.0),
    ((1, 2), "char_wb", (2, 5), 30.0),
    ((1, 2), "char_wb", (1, 5), 10.0),
    ((1, 2), "char_wb", (2, 6), 10.0),
    ((1, 3), "char_wb", (2, 5), 10.0),
    ((1, 2), "char", (2, 5), 10.0),
    ((1, 1), "char_wb", (2, 5), 10.0),
    ((1, 2), "char_wb", (1, 5), 30.0),
    ((1, 2), "char_wb", (1, 4), 10.0),
]


def model(word: tuple[int, int], analyzer: str, chars: tuple[int, int], c: float):  # noqa: ANN201
    """Return the scikit-learn pipeline TfidfIntentClassifier builds for these settings."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    common = {"strip_accents": "unicode", "lowercase": True, "sublinear_tf": True}
    return make_pipeline(
        make_union(TfidfVectorizer(analyzer="word", ngram_range=word, token_pattern=r"(?u)\b\w+\b", **common),
                   TfidfVectorizer(analyzer=analyzer, ngram_range=chars, **common)),
        LogisticRegression(C=c, max_iter=2000, class_weight="balanced"))


def main(argv: list[str] | None = None) -> int:
    """Score every candidate; print the table best first."""
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--only", type=int, nargs="*", default=None, help="indexes of CANDIDATES to run")
    args = parser.parse_args(argv)
    texts, intents = nlu_peers.training_examples(REPO / "data" / "nlu")
    splitter = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=42)
    rows = []
    chosen = [CANDIDATES[i] for i in args.only] if args.only else CANDIDATES
    for word, analyzer, chars, c in chosen:
        started = time.perf_counter()
        predicted = cross_val_predict(model(word, analyzer, chars, c), texts, intents, cv=splitter, n_jobs=args.jobs)
        seconds = (time.perf_counter() - started) / args.folds
        rows.append((f1_score(intents, predicted, average="macro"), accuracy_score(intents, predicted), seconds,
                     f"word {word} {analyzer} {chars} C={c:g}"))
        print(f"{rows[-1][3]:<40} macro-F1 {rows[-1][0]:.4f} accuracy {rows[-1][1]:.4f} {seconds:.1f} s/fold",
              flush=True)
    print(f"\n{len(texts)} examples, {args.folds}-fold CV, best first:")
    for f1, accuracy, seconds, name in sorted(rows, reverse=True):
        print(f"{name:<40} {f1:.4f} {accuracy:.4f} {seconds:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
