"""Pure NLU metrics and the held-out set's reader, for `bench.py` and `nlu_peers.py`.

Shared by `bench.py` (app venv, Python 3.11) and `nlu_peers.py` (Rasa venv, Python 3.10):
standard library and PyYAML only.

Definitions (one held-out utterance = one record `{"lang", "text", "intent", "predicted"}`):

- *fallback labels*: `nlu_fallback` and `out_of_scope`. An out-of-scope utterance predicted as
  either is recognised; an in-scope utterance predicted as either is a *false fallback*.
- *accuracy*: share of utterances whose prediction is right, an out-of-scope one being right
  when predicted as a fallback label.
- *macro-F1*: mean of the per-intent F1 over the in-scope intents present in the gold labels
  (out_of_scope excluded). For intent c: TP = gold c and predicted c; FP = predicted c, gold
  anything else (out-of-scope utterances included); FN = gold c, predicted anything else
  (fallback labels included). F1 = 2·TP / (2·TP + FP + FN), 0 when the intent is never right.
- *out-of-scope recall*: out-of-scope utterances recognised / out-of-scope utterances.
- *false-fallback rate*: in-scope utterances predicted as a fallback label / in-scope utterances.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

OUT_OF_SCOPE = "out_of_scope"
FALLBACK = "nlu_fallback"
FALLBACK_LABELS = frozenset({OUT_OF_SCOPE, FALLBACK})
#: Rasa's entity annotation: `[text](entity)`, `[text]{"entity": ...}`, `[text][{...}]`.
_ANNOTATION = re.compile(r"\[([^\]]*)\](?:\([^)]*\)|\{[^}]*\}|\[[^\]]*\])")


def strip_annotations(text: str) -> str:
    """Return the plain text of a Rasa training example (`[Müller](name)` → `Müller`)."""
    return _ANNOTATION.sub(r"\1", text).strip()


def fold(text: str) -> str:
    """Return the key under which two utterances count as the same.

    Lower-cased, accents removed, entity annotations removed, repeated spaces collapsed, spaces and
    punctuation at the ends stripped.
    """
    plain = unicodedata.normalize("NFKD", strip_annotations(text).lower())
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    return " ".join(plain.split()).strip(" .!?,;:")


def read_nlu_examples(path: Path) -> list[tuple[str, str]]:
    """Read the intent examples of one Rasa NLU YAML file.

    Returns:
        `(intent, text)` pairs in file order, entity annotations removed; synonyms, lookups and
        regexes are skipped.
    """
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    pairs: list[tuple[str, str]] = []
    for block in document.get("nlu") or []:
        if not isinstance(block, dict) or "intent" not in block:
            continue
        examples = block.get("examples") or ""
        if isinstance(examples, str):
            lines = [line.strip()[2:] for line in examples.splitlines() if line.strip().startswith("- ")]
        else:  # the long form: a list of {"text": ...}
            lines = [str(item.get("text", "")) for item in examples if isinstance(item, dict)]
        pairs.extend((str(block["intent"]), strip_annotations(line)) for line in lines if line.strip())
    return pairs


def read_heldout(directory: Path, languages: Sequence[str] = ("fr", "de", "en")) -> list[dict[str, str]]:
    """Read `<directory>/<lang>.yml` for each language.

    Returns:
        records `{"lang", "intent", "text"}`, one per held-out utterance.
    """
    return [{"lang": lang, "intent": intent, "text": text}
            for lang in languages for intent, text in read_nlu_examples(directory / f"{lang}.yml")]


def is_correct(gold: str, predicted: str) -> bool:
    """Return True when `predicted` is right for `gold` (any fallback label is right for out_of_scope)."""
    return predicted in FALLBACK_LABELS if gold == OUT_OF_SCOPE else predicted == gold


def per_intent_f1(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Return the F1 of every in-scope intent present in `gold` (definition in the module docstring)."""
    if len(gold) != len(predicted):
        raise ValueError("gold and predicted differ in length")
    true_pos: Counter[str] = Counter()
    false_pos: Counter[str] = Counter()
    false_neg: Counter[str] = Counter()
    for g, p in zip(gold, predicted, strict=True):
        if g == p:
            true_pos[g] += 1
        else:
            false_pos[p] += 1
            false_neg[g] += 1
    scores = {}
    for intent in sorted(set(gold) - {OUT_OF_SCOPE}):
        denominator = 2 * true_pos[intent] + false_pos[intent] + false_neg[intent]
        scores[intent] = 2 * true_pos[intent] / denominator if denominator else 0.0
    return scores


def macro_f1(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """Return the mean F1 over the in-scope intents of `gold` (0.0 when there is none)."""
    scores = per_intent_f1(gold, predicted)
    return sum(scores.values()) / len(scores) if scores else 0.0


def oos_recall(gold: Sequence[str], predicted: Sequence[str]) -> float | None:
    """Return the share of out-of-scope utterances predicted as a fallback label (None without any)."""
    hits = [p in FALLBACK_LABELS for g, p in zip(gold, predicted, strict=True) if g == OUT_OF_SCOPE]
    return sum(hits) / len(hits) if hits else None


def false_fallback_rate(gold: Sequence[str], predicted: Sequence[str]) -> float | None:
    """Return the share of in-scope utterances predicted as a fallback label (None without any)."""
    misses = [p in FALLBACK_LABELS for g, p in zip(gold, predicted, strict=True) if g != OUT_OF_SCOPE]
    return sum(misses) / len(misses) if misses else None


def accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """Return the share of right predictions (see `is_correct`); 0.0 for no utterance."""
    right = [is_correct(g, p) for g, p in zip(gold, predicted, strict=True)]
    return sum(right) / len(right) if right else 0.0


def scores(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Return every figure of one set of predictions.

    Returns:
        `{"n", "accuracy", "macro_f1", "oos_recall", "false_fallback", "per_intent_f1"}`; rates
        are fractions in [0, 1] (None when the set has no utterance of that kind).
    """
    return {"n": len(gold), "accuracy": accuracy(gold, predicted), "macro_f1": macro_f1(gold, predicted),
            "oos_recall": oos_recall(gold, predicted), "false_fallback": false_fallback_rate(gold, predicted),
            "per_intent_f1": per_intent_f1(gold, predicted)}


def evaluate(records: Iterable[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Score held-out predictions per language and over all languages.

    Args:
        records: `{"lang", "intent", "predicted", ...}` per utterance.

    Returns:
        `{lang: scores(...), ..., "all": scores(...)}`.
    """
    by_lang: dict[str, tuple[list[str], list[str]]] = {}
    for record in records:
        for key in (record["lang"], "all"):
            gold, predicted = by_lang.setdefault(key, ([], []))
            gold.append(record["intent"])
            predicted.append(record["predicted"])
    return {lang: scores(gold, predicted) for lang, (gold, predicted) in by_lang.items()}


def choose_threshold(gold: Sequence[str], labels: Sequence[str], confidences: Sequence[float],
                     max_added_false_fallback: float = 0.01) -> float:
    """Choose a confidence threshold for a classifier without a fallback of its own.

    Below the threshold a prediction becomes `nlu_fallback`. The chosen threshold is the highest
    one on a 0.00–0.95 grid (step 0.01) that sends at most `max_added_false_fallback` (a fraction
    of the in-scope utterances) more in-scope utterances to a fallback label than no threshold
    does (in-scope utterances already predicted `out_of_scope` count at every threshold): the most
    out-of-scope recall that budget allows.

    Args:
        gold: true intents (out-of-fold predictions on the training data: all lists of one length).
        labels: predicted intents.
        confidences: their probabilities (0–1).
        max_added_false_fallback: fraction of the in-scope utterances the threshold may add to
            the fallback labels.
    """
    base = false_fallback_rate(gold, labels)
    if base is None:
        return 0.0
    best = 0.0
    for step in range(96):
        threshold = step / 100
        predicted = [FALLBACK if c < threshold else label for label, c in zip(labels, confidences, strict=True)]
        rate = false_fallback_rate(gold, predicted)
        if rate is not None and rate <= base + max_added_false_fallback + 1e-12:
            best = threshold
    return best


def apply_fallback(ranking: Sequence[Sequence[Any]], threshold: float, ambiguity_threshold: float = 0.0) -> str:
    """Return the intent Rasa's FallbackClassifier gives for a classifier's ranking, at other thresholds.

    Re-applies a fallback to a prediction made with or without one, without retraining: the
    ranking is Rasa's `intent_ranking` as `[name, confidence]` pairs, best first; an `nlu_fallback`
    entry (put first by a FallbackClassifier) is ignored, the classifier's own intents stay.

    Args:
        ranking: `[name, confidence]` pairs, best first.
        threshold: below this confidence the top intent becomes `nlu_fallback`.
        ambiguity_threshold: when the top two intents are closer than this, `nlu_fallback` too.
    """
    own = [(str(name), float(confidence)) for name, confidence in ranking if name != FALLBACK]
    if not own:
        return FALLBACK
    top, confidence = own[0]
    if confidence < threshold:
        return FALLBACK
    if len(own) > 1 and confidence - own[1][1] < ambiguity_threshold:
        return FALLBACK
    return top

