"""NLU predictions for `bench.py`, run with the Rasa venv's Python (3.10: Rasa and scikit-learn live there).

Two sub-commands, each writing one JSON file:

- `predict --model M.tar.gz --heldout DIR --out F.json`: loads a trained Rasa model
  (`rasa.core.agent.Agent.load`) and parses every held-out utterance (`Agent.parse_message`). The
  predicted intent is Rasa's, so a FallbackClassifier in the pipeline yields `nlu_fallback` at its
  configured threshold. Writes `{"records": [{"lang", "intent", "text", "predicted", "confidence",
  "ranking"}], "load_s", "parse_ms_mean"}`; `ranking` is the top of Rasa's intent ranking as
  `[name, confidence]` pairs (the classifier's own intents after a fallback: thresholds can be
  re-applied without retraining, `nlu_metrics.apply_fallback`).
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
- `cv --config C.yml --train DIR --out F.json [--folds 3] [--seed 42]`: k-fold cross-validation of
  a Rasa NLU pipeline on the training data, what `rasa test nlu --cross-validation` does, with two
  differences: the folds are seeded (Rasa's are not: the same data gives the same folds, so a gate
  on the figure is stable), and only the held-out fold is predicted (Rasa also re-predicts each
  training fold). The examples are Rasa's (annotations kept for the training, synonyms, regexes and
  lookups in every fold); intents with fewer examples than folds are left out, as Rasa does. Each
  fold is trained in-process (`rasa.model_training.train_nlu`) and its test part parsed with
  `Agent.parse_message` (so the config's FallbackClassifier applies). Writes `{"folds", "seed",
  "records": [{"fold", "lang", "intent", "text", "predicted", "confidence", "ranking"}], "fold_seconds",
  "fold_cpu_seconds", "dropped_intents", "n"}`; `lang` is the folder under DIR (fr, de, en, else "other").
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
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # config.yml names bot.nlu.components
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
            record["ranking"] = [[str(r.get("name")), round(float(r.get("confidence") or 0.0), 4)]
                                 for r in (parsed.get("intent_ranking") or [])[:4]]
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


def example_languages(train_dir: Path) -> dict[str, str]:
    """Return each training text's language: the first folder under `train_dir` (fr/de/en), else "other"."""
    from rasa.shared.nlu.training_data.loading import load_data

    languages: dict[str, str] = {}
    for path in sorted(train_dir.rglob("*.yml")):
        folder = path.relative_to(train_dir).parts[0]
        lang = folder if folder in ("fr", "de", "en") else "other"
        for message in load_data(str(path)).intent_examples:
            languages.setdefault(str(message.get("text")), lang)
    return languages


async def parse_texts(agent: Any, texts: list[str]) -> list[tuple[str, float, list[list[Any]]]]:
    """Return `(intent, confidence, ranking)` for each text as a loaded Rasa agent parses it (see `predict`)."""
    out = []
    for text in texts:
        parsed = await agent.parse_message(text)
        intent = parsed.get("intent") or {}
        ranking = [[str(r.get("name")), round(float(r.get("confidence") or 0.0), 4)]
                   for r in (parsed.get("intent_ranking") or [])[:4]]
        out.append((intent.get("name") or nlu_metrics.FALLBACK, float(intent.get("confidence") or 0.0), ranking))
    return out


def cross_validate(config: Path, train_dir: Path, folds: int, seed: int = 42) -> dict[str, Any]:
    """Seeded k-fold cross-validation of a Rasa NLU config on `train_dir` (see module docstring)."""
    import logging
    import tempfile
    from collections import Counter

    logging.disable(logging.WARNING)
    from rasa.core.agent import Agent
    from rasa.model_training import train_nlu
    from rasa.shared.nlu.training_data.formats.rasa_yaml import RasaYAMLWriter
    from rasa.shared.nlu.training_data.loading import load_data
    from rasa.shared.nlu.training_data.training_data import TrainingData
    from sklearn.model_selection import StratifiedKFold

    data = load_data(str(train_dir))
    languages = example_languages(train_dir)
    counts = Counter(str(m.get("intent")) for m in data.intent_examples)
    dropped = sorted(intent for intent, n in counts.items() if n < folds)
    examples = [m for m in data.intent_examples if str(m.get("intent")) not in dropped]
    labels = [str(m.get("intent")) for m in examples]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    records: list[dict[str, Any]] = []
    fold_seconds: list[float] = []
    fold_cpu_seconds: list[float] = []
    for fold, (train_index, test_index) in enumerate(splitter.split(examples, labels)):
        started, cpu_started = time.perf_counter(), time.process_time()
        fold_data = TrainingData(training_examples=[examples[i] for i in train_index],
                                 entity_synonyms=data.entity_synonyms, regex_features=data.regex_features,
                                 lookup_tables=data.lookup_tables)
        with tempfile.TemporaryDirectory(prefix="mydsp-cv-") as tmp:
            nlu_file = Path(tmp) / "nlu.yml"
            RasaYAMLWriter().dump(nlu_file, fold_data)
            model = train_nlu(str(config), str(nlu_file), tmp, fixed_model_name=f"fold{fold}")
            if not model:
                raise RuntimeError(f"fold {fold}: training failed")
            texts = [str(examples[i].get("text")) for i in test_index]
            parsed = asyncio.run(parse_texts(Agent.load(model), texts))
        for i, text, (predicted, confidence, ranking) in zip(test_index, texts, parsed, strict=True):
            records.append({"fold": fold, "lang": languages.get(text, "other"), "intent": labels[i], "text": text,
                            "predicted": predicted, "confidence": confidence, "ranking": ranking})
        fold_seconds.append(round(time.perf_counter() - started, 1))
        fold_cpu_seconds.append(round(time.process_time() - cpu_started, 1))
    return {"folds": folds, "seed": seed, "records": records, "fold_seconds": fold_seconds,
            "fold_cpu_seconds": fold_cpu_seconds,
            "dropped_intents": dropped, "n": len(examples)}


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
    three = sub.add_parser("cv")
    three.add_argument("--config", type=Path, required=True)
    three.add_argument("--train", type=Path, required=True)
    three.add_argument("--out", type=Path, required=True)
    three.add_argument("--folds", type=int, default=3)
    three.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.command == "predict":
        result = predict(args.model, args.heldout)
    elif args.command == "cv":
        result = cross_validate(args.config, args.train, args.folds, args.seed)
    else:
        result = tfidf(args.train, args.heldout, args.folds)
    args.out.write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
