"""The pipeline's own Rasa components (bot/nlu/components.py), trained and run in Rasa's environment.

TfidfIntentClassifier is trained on a small real training set, stored with skops and loaded back;
EntityTidy and the blend are checked on hand-made messages. No server: one subprocess in .venv-rasa.
"""

from __future__ import annotations

import json
import subprocess

from bot.launcher import RASA_PYTHON, REPO_ROOT

SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData
from bot.nlu.components import EntityTidy, TfidfIntentClassifier

examples = {
    "log_in": ["je veux me connecter", "connexion à mon dossier", "I want to log in", "let me log in please",
               "ich möchte mich anmelden", "einloggen bitte"],
    "reset_password": ["j'ai oublié mon mot de passe", "mot de passe perdu", "I forgot my password",
                       "reset my password", "Passwort vergessen", "ich habe mein Passwort vergessen"],
    "greet": ["bonjour", "salut", "hello", "hi there", "hallo", "guten Tag"],
}
data = TrainingData([Message(data={"text": t, "intent": i}) for i, texts in examples.items() for t in texts])
out = {}
with tempfile.TemporaryDirectory() as tmp:
    storage = LocalModelStorage(Path(tmp))
    resource = Resource("tfidf")
    classifier = TfidfIntentClassifier.create({"ranking_length": 2}, storage, resource, None)
    classifier.train(data)
    probes = ["jai oublie mon mot de pase", "je voudrais me conecter", "helo"]
    messages = classifier.process([Message(data={"text": t}) for t in probes])
    out["intents"] = [m.get("intent")["name"] for m in messages]
    out["ranking"] = [[r["name"], r["confidence"]] for r in messages[0].get("intent_ranking")]
    loaded = TfidfIntentClassifier.load({"ranking_length": 2}, storage, resource, None)
    again = loaded.process([Message(data={"text": t}) for t in probes])
    out["same_after_load"] = [m.get("intent_ranking") for m in again] == [m.get("intent_ranking") for m in messages]
    empty = TfidfIntentClassifier.load({}, storage, Resource("never-trained"), None)
    out["untrained_leaves_message"] = empty.process([Message(data={"text": "hello"})])[0].get("intent") is None
    blend = TfidfIntentClassifier({"blend_weight": 0.5}, storage, resource, loaded.pipeline)
    before = Message(data={"text": "hello", "intent_ranking": [{"name": "log_in", "confidence": 1.0}]})
    own = loaded.process([Message(data={"text": "hello"})])[0].get("intent_ranking")
    mixed = {r["name"]: r["confidence"] for r in blend.process([before])[0].get("intent_ranking")}
    own = {r["name"]: r["confidence"] for r in own}
    out["blend"] = abs(mixed["log_in"] - (0.5 * own.get("log_in", 0) + 0.5)) < 1e-9

tidy = EntityTidy.create({}, None, None, None)
entities = [
    {"entity": "contact_channel", "value": "sms", "extractor": "RegexEntityExtractor"},
    {"entity": "contact_channel", "value": "SMS", "extractor": "CRFEntityExtractor"},
    {"entity": "profession", "value": "dentiste", "extractor": "RegexEntityExtractor"},
    {"entity": "oos_topic", "value": "medical", "extractor": "CRFEntityExtractor"},
    {"entity": "language", "value": "de", "extractor": "CRFEntityExtractor"},
]
message = tidy.process([Message(data={"text": "x", "entities": entities})])[0]
out["tidy"] = [[e["entity"], e["value"], e["extractor"]] for e in message.get("entities")]
print(json.dumps(out))
"""


def run_in_rasa() -> dict:
    done = subprocess.run([str(RASA_PYTHON), "-c", SCRIPT], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_components_classify_store_load_blend_and_tidy():
    out = run_in_rasa()
    # typos, no accents, one letter missing: the character n-grams still find the intent
    assert out["intents"] == ["reset_password", "log_in", "greet"]
    ranking = out["ranking"]
    assert len(ranking) == 2 and ranking[0][0] == "reset_password" and ranking[0][1] >= ranking[1][1] > 0
    assert out["same_after_load"]
    assert out["untrained_leaves_message"]
    assert out["blend"]
    assert out["tidy"] == [["contact_channel", "sms", "RegexEntityExtractor"],
                           ["oos_topic", "medical", "CRFEntityExtractor"], ["language", "de", "CRFEntityExtractor"]]
