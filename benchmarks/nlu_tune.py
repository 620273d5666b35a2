"""Pipeline tuning by measurement (issue 8): one NLU variant, trained and scored on the held-out set.

For one Rasa config (a variant of `config.yml`, e.g. under `benchmarks/tuning/`): trains an NLU-only
model on `data/nlu` (timed: wall and CPU seconds, the CPU time being less sensitive to
what else runs on the machine; or takes `--model` already trained), parses the held-out set
`tests/nlu/heldout/` with it (`nlu_peers.py predict`, Rasa venv) and scores it with the bench's
definitions (`nlu_metrics`): per language in-scope macro-F1 and accuracy, out-of-scope recall,
in-scope sent to a fallback. The FallbackClassifier thresholds are then re-applied to the same
predictions (`nlu_metrics.apply_fallback` on the classifier's ranking): one training gives the
figures at every threshold of `--thresholds`.

Writes `benchmarks/results/tune-<name>.json` (every prediction included) and prints the figures
with the Markdown rows of `benchmarks/TUNING.md`. Run it niced: other services share the cores.

Usage: nice -n 15 .venv/bin/python benchmarks/nlu_tune.py --config benchmarks/tuning/V.yml
       [--model M.tar.gz] [--name N] [--thresholds 0.3,0.4,0.45] [--keep M.tar.gz]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import nlu_metrics  # noqa: E402

LANGUAGES = bench.LANGUAGES


def fallback_of(config: Path) -> tuple[float | None, float]:
    """Return the FallbackClassifier `(threshold, ambiguity_threshold)` of a config (None: no fallback)."""
    text = config.read_text(encoding="utf-8")
    block = re.search(r"name:\s*FallbackClassifier\s*\n((?:\s+\w+:.*\n?)*)", text)
    if not block:
        return None, 0.0
    threshold = re.search(r"threshold:\s*([0-9.]+)", block.group(1))
    ambiguity = re.search(r"ambiguity_threshold:\s*([0-9.]+)", block.group(1))
    return (float(threshold.group(1)) if threshold else 0.3), (float(ambiguity.group(1)) if ambiguity else 0.1)


def rescored(records: list[dict[str, Any]], threshold: float, ambiguity: float) -> dict[str, Any]:
    """Return `nlu_metrics.evaluate` of the records with the fallback re-applied at `threshold`."""
    again = [{**r, "predicted": nlu_metrics.apply_fallback(r["ranking"], threshold, ambiguity)} for r in records]
    return nlu_metrics.evaluate(again)


def row(name: str, threshold: float, scores: dict[str, Any], training_s: float | None) -> str:
    """Return one Markdown row: variant, per-language macro-F1, accuracy, OOS recall, false fallback, seconds."""
    f1 = " / ".join(f"{scores[lang]['macro_f1']:.3f}" for lang in LANGUAGES)
    acc = " / ".join(f"{scores[lang]['accuracy']:.3f}" for lang in LANGUAGES)
    seconds = "—" if training_s is None else f"{training_s:.0f}"
    return (f"| {name} @{threshold:.2f} | {f1} | {scores['all']['macro_f1']:.3f} | {acc} | "
            f"{scores['all']['oos_recall'] * 100:.1f} % | {scores['all']['false_fallback'] * 100:.1f} % | {seconds} |")


def main(argv: list[str] | None = None) -> int:
    """Train (or take) one variant, score it at its own and the given thresholds, write and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None, help="an already trained model of this config")
    parser.add_argument("--name", default=None, help="variant name (default: the config's file name)")
    parser.add_argument("--thresholds", default="0.3,0.35,0.4,0.45")
    parser.add_argument("--keep", type=Path, default=None, help="copy the trained model to this file")
    args = parser.parse_args(argv)
    name = args.name or args.config.stem
    threshold, ambiguity = fallback_of(args.config)
    thresholds = sorted({float(t) for t in args.thresholds.split(",")} | ({threshold} if threshold else set()))
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    log = bench.RESULTS / f"tune-{name}.log"
    with tempfile.TemporaryDirectory(prefix="mydsp-tune-") as tmp:
        work = Path(tmp)
        training_cpu_s: float | None = None
        if args.model:
            model, training_s = args.model, None
        else:
            print(f"{name}: training (log {log})...", flush=True)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            model, training_s = bench.train_rasa_nlu(args.config.resolve(), work, name, log)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            training_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            if args.keep:
                shutil.copyfile(model, args.keep)
        predictions = bench.rasa_predictions(model, work / "predictions.json", log)
    records = predictions["records"]
    by_threshold = {f"{t:.2f}": rescored(records, t, ambiguity) for t in thresholds}
    result = {"name": name, "config": str(args.config), "model": str(args.model) if args.model else None,
              "training_s": training_s, "training_cpu_s": training_cpu_s,
              "fallback_threshold": threshold, "ambiguity_threshold": ambiguity,
              "parse_ms_mean": predictions["parse_ms_mean"], "heldout": nlu_metrics.evaluate(records),
              "by_threshold": by_threshold, "records": records}
    out = bench.RESULTS / f"tune-{name}.json"
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    if training_s is not None:
        print(f"{name}: training {training_s:.0f} s wall, {training_cpu_s:.0f} s CPU")
    print(f"{name}: written {out}")
    print("| variant @threshold | macro-F1 fr / de / en | all | accuracy fr / de / en | OOS recall | false fb "
          "| train s |")
    for key, scores in by_threshold.items():
        print(row(name, float(key), scores, training_s))
    weakest = sorted(result["heldout"]["all"]["per_intent_f1"].items(), key=lambda kv: kv[1])[:5]
    print("weakest intents (own threshold):", ", ".join(f"{i} {v:.2f}" for i, v in weakest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
