"""Record tasks: add a document, "Mes documents", access of professionals, acting as an assistant.

Guide sections: Ajout d'un document; Donner un accès à un professionnel de santé; Bloquer l'accès
à un professionnel de santé; Consulter le DSP d'une tierce personne en tant qu'assistant. Every
task needs a login: without one, the user logs in first and the task resumes afterwards
(`pending_task`). Only ids and codes go to Rasa; names of people and document titles are filled
in by the gateway from the message's `custom` view (docs/records-api.md).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions.accounts import ABORT, TaskFormValidation, end_task, session_of
from actions.common import (
    ACCESS_CONFIRMED,
    DOCUMENT_TYPE,
    HOLDER_ID,
    PENDING_TASK,
    PROFESSIONAL_ID,
    PROFESSIONAL_NAME,
    PROFESSIONAL_PROFESSION,
    PROFESSIONAL_QUERY,
    SWITCH_CONFIRMED,
    TASK_ABORTED,
    UPLOAD_ERROR,
    UPLOAD_LIMIT_MB,
    UPLOAD_REF,
    ServiceFailure,
    call_or_say,
    call_service,
    utter_error,
)
from bot.dsp import DspError, access, assistants, documents, get_settings, imaging

Result = dict[str, Any]

#: Where each record task starts: a form, or an action that answers at once.
TASK_ENTRIES = {
    "upload_document": "upload_form",
    "grant_access": "grant_form",
    "block_access": "block_form",
    "unblock_access": "unblock_form",
    "assistant_access": "assistant_form",
    "list_documents": "action_list_documents",
    "list_access": "action_list_access",
    "view_imaging": "action_list_studies",
}
#: At most this many documents (studies) are offered in one listing (newest first).
MAX_LISTED_DOCUMENTS = 10
MAX_LISTED_STUDIES = 10
#: At most this many key images are sent as pictures per study (the viewer shows them all).
MAX_KEY_IMAGES = 4


def latest_intent(tracker: Tracker) -> str | None:
    """Return the name of the latest user intent."""
    return (tracker.latest_message.get("intent") or {}).get("name")


def from_button(tracker: Tracker) -> bool:
    """True when the latest message is a button's payload (ids are taken from buttons only, never from text)."""
    return str(tracker.latest_message.get("text") or "").startswith("/")


def choice(entity: str, value: int | str) -> str:
    """Return the payload of a button that chooses `value` (`/choose{"<entity>": "<value>"}`)."""
    return "/choose" + json.dumps({entity: str(value)}, separators=(",", ":"))


async def login_first(dispatcher: CollectingDispatcher, tracker: Tracker, task: str) -> list[EventType] | None:
    """Return the events that start the login for `task` when nobody is logged in, else None."""
    session = await session_of(tracker)
    if session is not None and not session.needs_terms:
        return None
    if session is not None:  # logged in, terms of use not accepted yet
        dispatcher.utter_message(response="utter_ask_terms")
        return [SlotSet(PENDING_TASK, task)]
    dispatcher.utter_message(response="utter_need_login")
    return [SlotSet(PENDING_TASK, task), FollowupAction("login_form")]


class ActionStartRecordTask(Action):
    """Start a record task: login first if needed, then the task's form or answer."""

    def name(self) -> str:
        """Return the action name."""
        return "action_start_record_task"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Check the login, then open the form (or refuse when there is nothing to do)."""
        task = tracker.get_slot(PENDING_TASK) or latest_intent(tracker) or ""
        entry = TASK_ENTRIES.get(task)
        if entry is None:
            dispatcher.utter_message(response="utter_anything_else")
            return [SlotSet(PENDING_TASK, None)]
        events = await login_first(dispatcher, tracker, task)
        if events is not None:
            return events
        events = [SlotSet(PENDING_TASK, None)]
        if entry in ANSWERING_ACTIONS:
            # Answer now; when this runs as a follow-up (after a login), nothing predicts what comes next.
            answer = await ANSWERING_ACTIONS[entry]().run(dispatcher, tracker, domain)
            return [*events, *answer, FollowupAction("action_listen")]
        if task == "upload_document":
            events.append(SlotSet(UPLOAD_LIMIT_MB, str(get_settings().upload_max_mb)))
        elif task == "unblock_access":
            ok, overview = await call_or_say(dispatcher, access.list_access, tracker.sender_id)
            if not ok:
                return events
            if not overview.blocked:
                dispatcher.utter_message(response="utter_nothing_blocked")
                return events
        elif task == "assistant_access":
            ok, persons = await call_or_say(dispatcher, assistants.list_assisted, tracker.sender_id)
            if not ok:
                return events
            if not persons:
                dispatcher.utter_message(response="utter_no_designation")
                return events
        return [*events, FollowupAction(entry)]


class ActionReceiveFile(Action):
    """A file arrived (or was refused by the gateway) while no upload form runs."""

    def name(self) -> str:
        """Return the action name."""
        return "action_receive_file"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Say why a file was refused; start the upload form for a received one, unless a task runs."""
        error = tracker.get_slot(UPLOAD_ERROR)
        ref = tracker.get_slot(UPLOAD_REF)
        if error:
            dispatcher.utter_message(response=f"utter_err_{error}", **documents.refusal_params(error))
            return [SlotSet(UPLOAD_ERROR, None)]
        if not ref:
            dispatcher.utter_message(response="utter_anything_else")
            return []
        if tracker.active_loop_name:
            try:
                await call_service(documents.discard_upload, tracker.sender_id, ref)
            except (DspError, ServiceFailure):
                pass
            dispatcher.utter_message(response="utter_file_later")
            return [SlotSet(UPLOAD_REF, None)]
        return [SlotSet(UPLOAD_LIMIT_MB, str(get_settings().upload_max_mb)), FollowupAction("upload_form")]


class ActionChoose(Action):
    """A button chosen outside a task: open a document, or pick a person to assist."""

    def name(self) -> str:
        """Return the action name."""
        return "action_choose"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Send the chosen document, or start the switch to the chosen person."""
        if not from_button(tracker):  # text the NLU took for a choice: ids are never read from text
            return [FollowupAction("action_handle_fallback")]
        document_id = next(tracker.get_latest_entity_values("document_id"), None)
        holder_id = next(tracker.get_latest_entity_values("holder_id"), None)
        study_id = next(tracker.get_latest_entity_values("study_id"), None)
        if study_id and study_id.isdigit():
            await open_study(dispatcher, tracker, int(study_id))
            return []
        if document_id and document_id.isdigit():
            ok, found = await call_or_say(dispatcher, documents.describe_documents, tracker.sender_id,
                                          [int(document_id)])
            if ok and found:
                dispatcher.utter_message(response="utter_document_sent", document_id=document_id)
            elif ok:
                dispatcher.utter_message(response="utter_err_document_not_found")
            return []
        if holder_id and holder_id.isdigit():
            events = await login_first(dispatcher, tracker, "assistant_access")
            if events is not None:
                return events
            return [SlotSet(HOLDER_ID, holder_id), FollowupAction("assistant_form")]
        dispatcher.utter_message(response="utter_anything_else")
        return []


class ActionListDocuments(Action):
    """"Mes documents": the documents of the record, newest first, each one a button to open it."""

    def name(self) -> str:
        """Return the action name."""
        return "action_list_documents"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """List the documents (the gateway fills in titles and authors)."""
        events = await login_first(dispatcher, tracker, "list_documents")
        if events is not None:
            return events
        ok, found = await call_or_say(dispatcher, documents.list_documents, tracker.sender_id)
        if not ok:
            return [SlotSet(PENDING_TASK, None)]
        if not found:
            dispatcher.utter_message(response="utter_no_documents")
        else:
            ids = ",".join(str(doc.id) for doc in found[:MAX_LISTED_DOCUMENTS])
            dispatcher.utter_message(response="utter_documents_list", document_ids=ids)
        return [SlotSet(PENDING_TASK, None)]


class ActionListStudies(Action):
    """"Imagerie médicale": the imaging studies of the record, newest first, each one a button."""

    def name(self) -> str:
        """Return the action name."""
        return "action_list_studies"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """List the studies (the gateway fills in modality, date and description in words)."""
        events = await login_first(dispatcher, tracker, "view_imaging")
        if events is not None:
            return events
        ok, found = await call_or_say(dispatcher, imaging.list_studies, tracker.sender_id)
        if ok and not found:
            dispatcher.utter_message(response="utter_no_studies")
        elif ok:
            ids = ",".join(str(study.id) for study in found[:MAX_LISTED_STUDIES])
            dispatcher.utter_message(response="utter_studies_list", study_ids=ids)
        return [SlotSet(PENDING_TASK, None)]


async def open_study(dispatcher: CollectingDispatcher, tracker: Tracker, study_id: int) -> None:
    """Send a study: its summary, its report, its key images as pictures and the web viewer link."""
    ok, detail = await call_or_say(dispatcher, imaging.open_study, tracker.sender_id, study_id)
    if not ok:
        return
    dispatcher.utter_message(response="utter_study_header", study_id=str(study_id))
    if detail.report_document_id is not None:
        dispatcher.utter_message(response="utter_study_report", document_id=str(detail.report_document_id))
    else:
        dispatcher.utter_message(response="utter_no_report")
    for image in detail.key_images[:MAX_KEY_IMAGES]:
        if image.renderable:
            dispatcher.utter_message(response="utter_key_image", instance_id=str(image.id))
        else:
            dispatcher.utter_message(response="utter_key_image_not_renderable")
    dispatcher.utter_message(response="utter_viewer_link", study_id=str(study_id))


class ActionListAccess(Action):
    """Who has access to the record ("Intervenants") and who is blocked ("Accès bloqué")."""

    def name(self) -> str:
        """Return the action name."""
        return "action_list_access"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """List the professionals with access, then the blocked ones."""
        events = await login_first(dispatcher, tracker, "list_access")
        if events is not None:
            return events
        ok, overview = await call_or_say(dispatcher, access.list_access, tracker.sender_id)
        if not ok:
            return [SlotSet(PENDING_TASK, None)]
        if not overview.granted and not overview.blocked:
            dispatcher.utter_message(response="utter_access_list_empty")
        if overview.granted:
            dispatcher.utter_message(response="utter_access_list_granted", items=access.bullets(overview.granted))
        if overview.blocked:
            dispatcher.utter_message(response="utter_access_list_blocked", items=access.bullets(overview.blocked))
        return [SlotSet(PENDING_TASK, None)]


class ActionSwitchBack(Action):
    """Back to one's own record after acting as an assistant (one step)."""

    def name(self) -> str:
        """Return the action name."""
        return "action_switch_back"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """End the switch, or say there was none."""
        ok, ended = await call_or_say(dispatcher, assistants.act_for_self, tracker.sender_id)
        if ok:
            dispatcher.utter_message(response="utter_switched_back" if ended else "utter_already_own_record")
        return []


# --------------------------------------------------------------------------- upload form


class ValidateUploadForm(TaskFormValidation):
    """Validate the upload form: the file (sent through the gateway), then the document type."""

    def name(self) -> str:
        """Return the action name."""
        return "validate_upload_form"

    async def get_validation_events(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        """Validate the form's slots; a file the gateway refused is said first, and a file is asked again.

        `upload_error` is not a slot the form asks for, so rasa-sdk would not validate it: it is
        handled here. Without a login (or with a revoked designation) the task ends.
        """
        events = await super().get_validation_events(dispatcher, tracker, domain)
        error = tracker.slots_to_validate().get(UPLOAD_ERROR)
        if not error:
            return events
        dispatcher.utter_message(response=f"utter_err_{error}", **documents.refusal_params(error))
        events += [SlotSet(UPLOAD_ERROR, None), SlotSet(UPLOAD_REF, None)]
        if error in ("not_logged_in", "terms_pending", "assistant_revoked"):
            events.append(SlotSet(TASK_ABORTED, True))
        return events

    async def validate_document_type(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Accept one of the document types a patient may add."""
        if value in documents.DOCUMENT_TYPES:
            return {DOCUMENT_TYPE: value}
        utter_error(dispatcher, DspError("document_type_unknown"))
        return {DOCUMENT_TYPE: None}


class RecordTaskDone(Action, ABC):
    """Base of the actions that close a record task (shared, abstract)."""

    @abstractmethod
    def name(self) -> str:
        """Return the action name; concrete subclasses override it."""

    @abstractmethod
    async def finish(self, dispatcher: CollectingDispatcher, tracker: Tracker) -> list[EventType]:
        """Do the task's one write and answer it; return extra events."""

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Finish unless the task was aborted (its reason already said), then forget the task's slots."""
        extra: list[EventType] = []
        if tracker.get_slot(TASK_ABORTED):
            dispatcher.utter_message(response="utter_anything_else")
        else:
            extra = await self.finish(dispatcher, tracker)
        return [*await end_task(tracker), *extra]


class ActionUploadDone(RecordTaskDone):
    """File the uploaded document under the chosen type ("Mes documents")."""

    def name(self) -> str:
        """Return the action name."""
        return "action_upload_done"

    async def finish(self, dispatcher: CollectingDispatcher, tracker: Tracker) -> list[EventType]:
        """File the document, then confirm."""
        ok, _ = await call_or_say(dispatcher, documents.file_document, tracker.sender_id,
                                  tracker.get_slot(UPLOAD_REF), tracker.get_slot(DOCUMENT_TYPE))
        if ok:
            dispatcher.utter_message(response="utter_document_added")
        return []


# --------------------------------------------------------------------------- access forms


def professional_slots(info: access.ProfessionalInfo) -> Result:
    """Return the slots that name the chosen professional in the confirmation question."""
    return {PROFESSIONAL_ID: str(info.id), PROFESSIONAL_NAME: info.display_name,
            PROFESSIONAL_PROFESSION: info.profession}


class AccessFormValidation(TaskFormValidation, ABC):
    """Shared validation of the grant, block and unblock forms."""

    #: Directory status filter of the search (None: everybody).
    search_status: str | None = None

    async def validate_professional_query(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Search the directory; too short, no match and too many each get their own answer."""
        slots, _ = await self.check(dispatcher, PROFESSIONAL_QUERY, value, access.search_professionals,
                                    tracker.sender_id, value, status=self.search_status,
                                    retry={"not_logged_in": ABORT, "assistant_revoked": ABORT})
        return slots

    async def validate_professional_id(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Look the chosen professional up; a choice that changes nothing ends the task."""
        if not str(value).isdigit() or not from_button(tracker):
            utter_error(dispatcher, DspError("professional_unknown"))
            return {PROFESSIONAL_ID: None}
        slots, info = await self.check(dispatcher, PROFESSIONAL_ID, value, access.describe_professional,
                                       tracker.sender_id, int(value),
                                       retry={"not_logged_in": ABORT, "assistant_revoked": ABORT})
        if info is None:
            return slots
        refusal = self.refusal(info)
        if refusal:
            dispatcher.utter_message(response=refusal, professional_name=info.display_name)
            return {**professional_slots(info), TASK_ABORTED: True}
        return professional_slots(info)

    def refusal(self, info: access.ProfessionalInfo) -> str | None:
        """Return the response that ends the task for this professional's status, or None."""
        return None


class ValidateGrantForm(AccessFormValidation):
    """Validate the grant form: search, choice, confirmation ("Ajouter un intervenant", "Valider")."""

    def name(self) -> str:
        """Return the action name."""
        return "validate_grant_form"

    def refusal(self, info: access.ProfessionalInfo) -> str | None:
        """Already granted: nothing to do; blocked: lift the block first."""
        return {"granted": "utter_access_already_granted", "blocked": "utter_err_professional_blocked"}.get(
            info.status or "")


class ValidateBlockForm(AccessFormValidation):
    """Validate the block form: search by name and specialty, choice, "Oui, bloquer l'accès"."""

    def name(self) -> str:
        """Return the action name."""
        return "validate_block_form"

    def refusal(self, info: access.ProfessionalInfo) -> str | None:
        """Already blocked: nothing to do."""
        return "utter_access_already_blocked" if info.status == "blocked" else None


class ValidateUnblockForm(AccessFormValidation):
    """Validate the unblock form: a choice among the blocked professionals, then confirmation."""

    search_status = "blocked"

    def name(self) -> str:
        """Return the action name."""
        return "validate_unblock_form"

    def refusal(self, info: access.ProfessionalInfo) -> str | None:
        """Not blocked: nothing to lift."""
        return None if info.status == "blocked" else "utter_access_not_blocked"


class ActionAskProfessionalId(Action):
    """Offer the matches of the search as buttons."""

    def name(self) -> str:
        """Return the action name."""
        return "action_ask_professional_id"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Search again with the validated query and show one button per professional."""
        ok, found = await call_or_say(dispatcher, access.search_professionals, tracker.sender_id,
                                      tracker.get_slot(PROFESSIONAL_QUERY) or "")
        if not ok:
            return [SlotSet(PROFESSIONAL_QUERY, None)]
        buttons = [{"title": info.label, "payload": choice("professional_id", info.id)} for info in found]
        dispatcher.utter_message(response="utter_choose_professional", buttons=buttons)
        return []


class ActionAskUnblockProfessionalId(Action):
    """Offer the blocked professionals as buttons."""

    def name(self) -> str:
        """Return the action name."""
        return "action_ask_unblock_form_professional_id"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """One button per blocked professional."""
        ok, overview = await call_or_say(dispatcher, access.list_access, tracker.sender_id)
        if not ok:
            return [SlotSet(TASK_ABORTED, True)]
        buttons = [{"title": info.label, "payload": choice("professional_id", info.id)} for info in overview.blocked]
        dispatcher.utter_message(response="utter_choose_blocked_professional", buttons=buttons)
        return []


class AccessTaskDone(RecordTaskDone, ABC):
    """Close an access task: the write when confirmed, "nothing changed" when declined."""

    #: Domain service of the write.
    service: Any
    #: Responses when the write changed something / when it did not.
    changed_response: str
    unchanged_response: str

    async def finish(self, dispatcher: CollectingDispatcher, tracker: Tracker) -> list[EventType]:
        """Write if confirmed, then answer with the professional's name."""
        if not tracker.get_slot(ACCESS_CONFIRMED):
            dispatcher.utter_message(response="utter_access_unchanged")
            return []
        ok, change = await call_or_say(dispatcher, type(self).service, tracker.sender_id,
                                       int(tracker.get_slot(PROFESSIONAL_ID)))
        if ok:
            dispatcher.utter_message(response=self.changed_response if change.changed else self.unchanged_response,
                                     professional_name=change.professional.display_name)
        return []


class ActionGrantDone(AccessTaskDone):
    """Grant access to the chosen professional."""

    service = access.grant_access
    changed_response = "utter_access_granted"
    unchanged_response = "utter_access_already_granted"

    def name(self) -> str:
        """Return the action name."""
        return "action_grant_done"


class ActionBlockDone(AccessTaskDone):
    """Block the chosen professional (an access they had is removed)."""

    service = access.block_access
    changed_response = "utter_access_blocked"
    unchanged_response = "utter_access_already_blocked"

    def name(self) -> str:
        """Return the action name."""
        return "action_block_done"


class ActionUnblockDone(AccessTaskDone):
    """Lift the block of the chosen professional."""

    service = access.unblock_access
    changed_response = "utter_access_unblocked"
    unchanged_response = "utter_access_not_blocked"

    def name(self) -> str:
        """Return the action name."""
        return "action_unblock_done"


# --------------------------------------------------------------------------- assistant


class ValidateAssistantForm(TaskFormValidation):
    """Validate the assistant form: the person chosen (designation in force), then confirmation."""

    def name(self) -> str:
        """Return the action name."""
        return "validate_assistant_form"

    async def validate_holder_id(
        self, value: str, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Result:
        """Accept only a person who designated the user as assistant."""
        if not str(value).isdigit() or not from_button(tracker):
            utter_error(dispatcher, DspError("not_designated"))
            return {HOLDER_ID: None}
        slots, _ = await self.check(dispatcher, HOLDER_ID, value, assistants.person_name, tracker.sender_id,
                                    int(value), retry={"not_logged_in": ABORT})
        return slots


class ActionAskHolderId(Action):
    """Offer the persons the user assists (the gateway shows their names as buttons)."""

    def name(self) -> str:
        """Return the action name."""
        return "action_ask_holder_id"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[EventType]:
        """Send the view of the designations in force."""
        ok, persons = await call_or_say(dispatcher, assistants.list_assisted, tracker.sender_id)
        if not ok:
            return [SlotSet(TASK_ABORTED, True)]
        if not persons:
            dispatcher.utter_message(response="utter_no_designation")
            return [SlotSet(TASK_ABORTED, True)]
        ids = ",".join(str(person.patient_id) for person in persons)
        dispatcher.utter_message(response="utter_assisted_list", holder_ids=ids)
        return []


class ActionAssistantDone(RecordTaskDone):
    """Switch to the chosen person's record once confirmed."""

    def name(self) -> str:
        """Return the action name."""
        return "action_assistant_done"

    async def finish(self, dispatcher: CollectingDispatcher, tracker: Tracker) -> list[EventType]:
        """Switch, or say the user stays where they were."""
        holder_id = tracker.get_slot(HOLDER_ID)
        if not tracker.get_slot(SWITCH_CONFIRMED):
            dispatcher.utter_message(response="utter_switch_cancelled")
            return []
        ok, _ = await call_or_say(dispatcher, assistants.act_for, tracker.sender_id, int(holder_id))
        if ok:
            dispatcher.utter_message(response="utter_switched", holder_id=holder_id)
        return []


#: Task entries answered at once (no form): run inline by action_start_record_task.
ANSWERING_ACTIONS: dict[str, type[Action]] = {
    "action_list_documents": ActionListDocuments,
    "action_list_access": ActionListAccess,
    "action_list_studies": ActionListStudies,
}
