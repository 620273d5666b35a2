"""NLU predictions for `bench.py`, run with the Rasa venv's Python (3.10: Rasa and scikit-learn live there).

Two sub-commands, each writing one JSON file:

- `predict --model M.tar.gz --heldout DIR --out F.json`: loads a trained Rasa model
  (`rasa.core.agent.Agent.load`) and parses every held-out utterance (`Agent.parse_message`). The
  predicted intent is Rasa's, so a FallbackClassifier in the pipeline yields `nlu_fallback` at its
  configured threshold. Writes `{"records": [{"lang", "intent", "text", "predicted", "confidence"}],
  "load_s", "parse_ms_mean"}`.
- `tfidf --train DIR --heldout DIR --out F.json [--folds 3]`: the scikit-learn peer. The training
  examples are read with Rasa's own loader (every file under DIR, annotations removed, as Rasa
  trains on them; lookup tables and synonyms are not examples). Features: TF-IDF of word 1–2-grams
  plus TF-IDF of character 2–5-grams within word boundaries (lower-cased, accents stripped, sublinear
  tf); classifier: LogisticRegression (C=10, lbfgs, balanced class weights). It has no fallback of
  its own: a stratified k-fold cross-validation on the training data gives out-of-fold
  probabilities, and the threshold is the highest (0.00–0.95) that sends at most 1 % more of the
  in-scope out-of-fold predictions to a fallback label than no threshold does
  (`nlu_metrics.choose_threshold`); below it the prediction is `nlu_fallback`. The same
  cross-validation gives the CV macro-F1 reported by the bench. Writes
  `{"records", "train_s", "threshold", "cv": {"folds", "macro_f1", "accuracy", ...}, "n_train"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")

import nlu_metrics  # noqa: E402


def predict(model: Path, heldout: Path) -> dict[str, Any]:
    """Parse every held-out utterance with a trained Rasa model (see module docstring)."""
    import logging

    logging.disable(logging.WARNING)
    from rasa.core.agent import Agent

    records = nlu_metrics.read_heldout(heldout)
    started = time.perf_counter()
    agent = Agent.load(str(model))
    load_s = time.perf_counter() - started

    async def parse_all() -> float:
        begin = time.perf_counter()
        for record in records:
            parsed = await agent.parse_message(record["text"])
            intent = parsed.get("intent") or {}
            record["predicted"] = intent.get("name") or nlu_metrics.FALLBACK
            record["confidence"] = float(intent.get("confidence") or 0.0)
        return (time.perf_counter() - begin) / max(1, len(records)) * 1000

    parse_ms = asyncio.run(parse_all())
    return {"records": records, "load_s": round(load_s, 2), "parse_ms_mean": round(parse_ms, 2)}


def training_examples(train_dir: Path) -> tuple[list[str], list[str]]:
    """Return the texts and intents Rasa trains on under `train_dir` (Rasa's loader)."""
    from rasa.shared.nlu.training_data.loading import load_data

    data = load_data(str(train_dir))
    texts, intents = [], []
    for message in data.intent_examples:
        texts.append(str(message.get("text")))
        intents.append(str(message.get("intent")))
    return texts, intents


def tfidf_model() -> Any:
    """Return the unfitted scikit-learn pipeline of the TF-IDF + logistic-regression peer."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    words = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), strip_accents="unicode", lowercase=True,
                            sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), strip_accents="unicode", lowercase=True,
                            sublinear_tf=True, min_df=1)
    classifier = LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced")
    return make_pipeline(make_union(words, chars), classifier)


def tfidf(train_dir: Path, heldout: Path, folds: int, seed: int = 42) -> dict[str, Any]:
    """Cross-validate, choose the fallback threshold, train on everything, predict the held-out set."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    texts, intents = training_examples(train_dir)
    started = time.perf_counter()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(tfidf_model(), texts, intents, cv=splitter, method="predict_proba")
    classes = sorted(set(intents))  # cross_val_predict orders columns as the sorted labels
    cv_labels = [classes[i] for i in probabilities.argmax(axis=1)]
    cv_conf = [float(v) for v in probabilities.max(axis=1)]
    threshold = nlu_metrics.choose_threshold(intents, cv_labels, cv_conf)
    cv_predicted = [nlu_metrics.FALLBACK if c < threshold else label
                    for label, c in zip(cv_labels, cv_conf, strict=True)]
    cv_s = time.perf_counter() - started
    cv_scores = nlu_metrics.scores(intents, cv_predicted)
    cv_raw = nlu_metrics.scores(intents, cv_labels)

    started = time.perf_counter()
    model = tfidf_model().fit(texts, intents)
    train_s = time.perf_counter() - started

    records = nlu_metrics.read_heldout(heldout)
    probs = model.predict_proba([r["text"] for r in records])
    best = np.asarray(probs).argmax(axis=1)
    for record, index, row in zip(records, best, probs, strict=True):
        confidence = float(row[index])
        label = str(model.classes_[index])
        record["predicted"] = nlu_metrics.FALLBACK if confidence < threshold else label
        record["confidence"] = confidence
    return {"records": records, "train_s": round(train_s, 2), "threshold": threshold, "n_train": len(texts),
            "cv": {"folds": folds, "seconds": round(cv_s, 1), "macro_f1": cv_scores["macro_f1"],
                   "accuracy": cv_scores["accuracy"], "oos_recall": cv_scores["oos_recall"],
                   "false_fallback": cv_scores["false_fallback"], "macro_f1_without_threshold": cv_raw["macro_f1"],
                   "per_intent_f1": cv_scores["per_intent_f1"]}}


def main(argv: list[str] | None = None) -> int:
    """Command line (see module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("predict")
    one.add_argument("--model", type=Path, required=True)
    one.add_argument("--heldout", type=Path, required=True)
    one.add_argument("--out", type=Path, required=True)
    two = sub.add_parser("tfidf")
    two.add_argument("--train", type=Path, required=True)
    two.add_argument("--heldout", type=Path, required=True)
    two.add_argument("--out", type=Path, required=True)
    two.add_argument("--folds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "predict":
        result = predict(args.model, args.heldout)
    else:
        result = tfidf(args.train, args.heldout, args.folds)
    args.out.write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
