"""Unit tests of the benchmark's pure parts (metrics, held-out reader) and of the held-out set itself.

No service, no model: they run in a second.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench  # noqa: E402
import nlu_metrics as m  # noqa: E402

HELDOUT = REPO / "tests" / "nlu" / "heldout"
#: Intents users type, each needing ≥ 20 held-out utterances per language: the contract of
#: shared/intents.md and the added ones of domain/intents.yml (payload-only intents excluded:
#: provide_protected, provide_file, choose; inform answers a question in context).
TYPED_INTENTS = {
    "activate_account", "log_in", "reset_password", "upload_document", "grant_access", "block_access",
    "unblock_access", "assistant_access", "view_imaging", "request_human", "greet", "goodbye", "affirm", "deny",
    "thank", "bot_challenge", "out_of_scope", "cancel", "change_language", "help", "list_documents",
    "list_access", "switch_back", "log_out", "set_pin", "resend_code", "open_ticket", "accept_terms",
    "refuse_terms",
}


def test_f1_counts_fallbacks_as_misses_and_oos_hits_as_false_positives() -> None:
    gold = ["a", "a", "b", "b", "out_of_scope", "out_of_scope"]
    pred = ["a", "nlu_fallback", "b", "a", "a", "out_of_scope"]
    f1 = m.per_intent_f1(gold, pred)
    # a: TP 1, FP 2 (a "b" and an out-of-scope), FN 1 → 2/(2+2+1); b: TP 1, FP 0, FN 1 → 2/3.
    assert f1 == pytest.approx({"a": 2 / 5, "b": 2 / 3})
    assert m.macro_f1(gold, pred) == pytest.approx((2 / 5 + 2 / 3) / 2)
    assert "out_of_scope" not in f1


def test_rates_and_accuracy() -> None:
    gold = ["a", "a", "b", "b", "out_of_scope", "out_of_scope", "out_of_scope", "out_of_scope"]
    pred = ["a", "nlu_fallback", "out_of_scope", "b", "nlu_fallback", "out_of_scope", "a", "b"]
    assert m.oos_recall(gold, pred) == pytest.approx(0.5)
    assert m.false_fallback_rate(gold, pred) == pytest.approx(0.5)
    assert m.accuracy(gold, pred) == pytest.approx(4 / 8)
    assert m.oos_recall(["a"], ["a"]) is None
    assert m.false_fallback_rate(["out_of_scope"], ["a"]) is None


def test_evaluate_splits_by_language() -> None:
    records = [{"lang": "fr", "intent": "a", "predicted": "a"}, {"lang": "de", "intent": "a", "predicted": "b"}]
    result = m.evaluate(records)
    assert result["fr"]["accuracy"] == 1.0
    assert result["de"]["accuracy"] == 0.0
    assert result["all"]["n"] == 2
    assert result["all"]["accuracy"] == 0.5


def test_choose_threshold_keeps_within_the_false_fallback_budget() -> None:
    gold = ["a"] * 100 + ["out_of_scope"] * 10
    labels = ["a"] * 110
    confidences = [0.9] * 98 + [0.3, 0.2] + [0.25] * 10
    # 0.21 sends one in-scope (0.2) to fallback = +1 %: allowed; 0.31 would send two.
    threshold = m.choose_threshold(gold, labels, confidences, max_added_false_fallback=0.01)
    assert threshold == pytest.approx(0.30)
    assert m.choose_threshold(gold, labels, confidences, max_added_false_fallback=0.0) == pytest.approx(0.20)


def test_reads_nlu_yaml_with_annotations(tmp_path: Path) -> None:
    (tmp_path / "fr.yml").write_text(
        'version: "3.1"\nnlu:\n- intent: grant_access\n  examples: |\n    - donner accès au [Dr Müller](name)\n'
        "    - autoriser mon kiné\n- synonym: kine\n  examples: |\n    - kiné\n"
        "- intent: greet\n  examples:\n  - text: bonjour\n", encoding="utf-8")
    records = m.read_heldout(tmp_path, languages=("fr",))
    assert [(r["intent"], r["text"]) for r in records] == [
        ("grant_access", "donner accès au Dr Müller"), ("grant_access", "autoriser mon kiné"), ("greet", "bonjour")]
    assert m.fold("  Donner ACCÈS au [Dr Müller](name) !") == "donner acces au dr muller"


def test_percentiles() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    summary = bench.latency_summary(values)
    assert (summary["p50_ms"], summary["p95_ms"], summary["p99_ms"]) == (50.0, 95.0, 99.0)
    assert bench.percentile([], 0.5) != bench.percentile([], 0.5)  # NaN


def test_heldout_covers_every_typed_intent_in_each_language() -> None:
    records = m.read_heldout(HELDOUT)
    counts = Counter((r["lang"], r["intent"]) for r in records)
    short = {f"{lang}/{intent}": counts[(lang, intent)] for lang in ("fr", "de", "en") for intent in TYPED_INTENTS
             if counts[(lang, intent)] < 20}
    assert not short, f"fewer than 20 held-out utterances: {short}"
    unknown = {r["intent"] for r in records} - TYPED_INTENTS
    assert not unknown


def test_heldout_never_repeats_a_training_example() -> None:
    """No held-out utterance appears in data/nlu (case, accents and end punctuation folded)."""
    training = {m.fold(text) for path in (REPO / "data" / "nlu").rglob("*.yml")
                for _, text in m.read_nlu_examples(path)}
    records = m.read_heldout(HELDOUT)
    leaked = sorted({f"{r['lang']}: {r['text']}" for r in records if m.fold(r["text"]) in training})
    assert not leaked, f"held-out utterances found in the training data: {leaked}"
    within = Counter((r["lang"], m.fold(r["text"])) for r in records)
    assert not [key for key, n in within.items() if n > 1]
