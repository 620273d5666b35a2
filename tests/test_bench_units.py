"""Unit tests of the benchmark's pure parts (metrics, held-out reader) and of the held-out set itself.

No service, no model: they run in a second.
"""

from __future__ import annotations

import sys
import time
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


def test_server_timing_header_is_read_in_milliseconds() -> None:
    assert bench.server_timing("rasa;dur=81.5, total;dur=95.0") == {"rasa": 81.5, "total": 95.0}
    assert bench.server_timing('cache;desc="hit", db;dur=2') == {"db": 2.0}
    assert bench.server_timing("") == {}


def test_cpu_seconds_of_a_process_tree_grow_with_work() -> None:
    import os
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.5\n"
                              "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        before, own_before = bench.cpu_s(os.getpid()), time.process_time()
        deadline = time.monotonic() + 20
        while bench.cpu_s(child.pid) < 0.45 and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = bench.cpu_s(os.getpid()) - before
        own = time.process_time() - own_before
        assert tree - own >= 0.35  # the child's half second of CPU is in its parent's tree
        assert child.pid in bench.descendants(os.getpid())
    finally:
        child.kill()
    assert bench.cpu_s(2**22 + 7) == 0  # no such process


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


# --------------------------------------------------------------------------- cross-validation of ours


def _cv_records() -> list[dict[str, object]]:
    """Two folds: fold 0 perfect, fold 1 with one in-scope fallback and one out-of-scope miss."""
    fold0 = [("fr", "a", "a"), ("fr", "b", "b"), ("de", "out_of_scope", "nlu_fallback"), ("de", "a", "a")]
    fold1 = [("en", "a", "a"), ("en", "b", "nlu_fallback"), ("other", "out_of_scope", "a"), ("fr", "b", "b")]
    return [{"fold": fold, "lang": lang, "intent": gold, "text": f"t{fold}{i}", "predicted": pred, "confidence": 0.9}
            for fold, rows in enumerate((fold0, fold1)) for i, (lang, gold, pred) in enumerate(rows)] + [
        # A payload-only intent's example is not scored.
        {"fold": 1, "lang": "other", "intent": "provide_protected", "text": "pi_x", "predicted": "nlu_fallback",
         "confidence": 0.45}]


def test_cv_summary_gives_each_fold_macro_f1_and_their_mean() -> None:
    summary = bench.cv_summary({"folds": 2, "seed": 42, "records": _cv_records(), "fold_seconds": [10.0, 12.5],
                                "dropped_intents": [], "n": 9})
    assert summary["n"] == 8
    # Fold 1: a TP 1, FP 1 (the out-of-scope one), FN 0 → 2/3; b TP 1, FN 1 → 2/3.
    assert summary["fold_macro_f1"] == [1.0, pytest.approx(0.6667, abs=1e-4)]
    assert summary["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert summary["macro_f1_min"] == pytest.approx(2 / 3)
    assert summary["oos_recall"] == pytest.approx(0.5)
    assert summary["false_fallback"] == pytest.approx(1 / 6)
    assert summary["seconds"] == pytest.approx(22.5)
    assert set(summary["per_lang_macro_f1"]) == {"fr", "de", "en", "other"}


def test_cv_gate_fails_below_the_threshold_and_is_not_applied_when_skipped() -> None:
    cv = {"macro_f1": 0.91}
    assert bench.cv_gate(cv, 0.90)["passed"] is True
    assert bench.cv_gate(cv, 0.92)["passed"] is False
    skipped = bench.cv_gate(None, 0.99)
    assert skipped["passed"] is True and skipped["skipped"] is True
    assert "skipped" in bench.cv_lines(None, skipped)[0]
    lines = bench.cv_lines({**bench.cv_summary({"folds": 2, "records": _cv_records(), "fold_seconds": [1, 2]})},
                           bench.cv_gate({"macro_f1": 0.5}, 0.9))
    assert "1.000 0.667 → mean 0.833" in lines[0]
    assert lines[1].endswith("FAIL")


def test_exit_code_fails_when_either_gate_fails() -> None:
    ok, bad = {"passed": True}, {"passed": False}
    assert bench.exit_code({"gate": ok, "gate_cv": ok}) == 0
    assert bench.exit_code({"gate": ok}) == 0
    assert bench.exit_code({"gate": bad, "gate_cv": ok}) == 1
    assert bench.exit_code({"gate": ok, "gate_cv": bad}) == 1


def test_cv_folds_from_option_environment_and_quick_mode() -> None:
    assert bench.cv_folds_of(None, False, {}) == 3
    assert bench.cv_folds_of(None, False, {"BENCH_CV_FOLDS": "5"}) == 5
    assert bench.cv_folds_of(None, True, {"BENCH_CV_FOLDS": "5"}) == 0
    assert bench.cv_folds_of(2, True, {}) == 2
    assert bench.cv_folds_of(0, False, {"BENCH_CV_FOLDS": "5"}) == 0
    with pytest.raises(SystemExit):
        bench.cv_folds_of(1, False, {})


def test_min_cv_f1_and_folds_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_MIN_CV_F1", "0.97")
    monkeypatch.setenv("BENCH_CV_FOLDS", "4")
    args = bench.options([])
    assert (args.min_cv_f1, args.cv_folds) == (0.97, 4)
    assert bench.options(["--quick", "--min-cv-f1", "0.8"]).cv_folds == 0
    assert bench.options(["--quick", "--min-cv-f1", "0.8"]).min_cv_f1 == 0.8
    monkeypatch.delenv("BENCH_MIN_CV_F1")
    assert bench.options([]).min_cv_f1 == 0.75
    with pytest.raises(SystemExit):
        bench.options(["--cv-folds", "1"])
    example = (REPO / ".env.example").read_text(encoding="utf-8")
    assert "BENCH_MIN_CV_F1=" in example and "BENCH_CV_FOLDS=" in example


def test_apply_fallback_reapplies_thresholds_to_a_ranking() -> None:
    # As a FallbackClassifier at 0.45 left it: nlu_fallback first, the classifier's intents after.
    ranking = [["nlu_fallback", 0.45], ["log_in", 0.41], ["reset_password", 0.30]]
    assert m.apply_fallback(ranking, 0.45) == "nlu_fallback"
    assert m.apply_fallback(ranking, 0.40) == "log_in"
    assert m.apply_fallback(ranking, 0.40, ambiguity_threshold=0.12) == "nlu_fallback"
    assert m.apply_fallback([["greet", 0.9], ["thank", 0.05]], 0.3, 0.05) == "greet"
    assert m.apply_fallback([], 0.3) == "nlu_fallback"
