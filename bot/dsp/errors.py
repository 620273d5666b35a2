"""Errors of the DSP domain layer.

Each error carries a stable ``code`` (the action layer answers with ``utter_err_<code>``) and
``params`` that are safe to show to the user. Neither ever contains a secret or a personal value.
"""

from __future__ import annotations


class DspError(Exception):
    """Base error: ``str(error) == error.code``.

    Attributes:
        code: Stable snake_case code, e.g. ``"otp_wrong"``.
        params: Values safe to show, e.g. ``{"tries_left": 3}``.
    """

    def __init__(self, code: str, **params: int | str) -> None:
        super().__init__(code)
        self.code = code
        self.params: dict[str, int | str] = dict(params)

    def __str__(self) -> str:
        return self.code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.params!r})"


class MatriculeInvalid(DspError):
    """The matricule is malformed (codes ``matricule_*``)."""


class ActivationError(DspError):
    """Activation refused (``activation_code_wrong``, ``activation_locked``, ``account_already_active``)."""


class PasswordRejected(DspError):
    """A new password breaks the policy (``password_*``)."""


class ContactInvalid(DspError):
    """An e-mail address or phone number is refused (``contact_invalid_*``)."""


class CodeRejected(DspError):
    """A one-time code is refused (``otp_wrong``, ``otp_expired``, ``otp_exhausted``)."""


class AuthError(DspError):
    """Authentication refused (``credentials_wrong``, ``account_*``, ``login_delay``, ``not_logged_in``)."""


class VaultMiss(DspError):
    """A protected-input reference is unknown, expired or from another conversation (``input_expired``)."""

    def __init__(self) -> None:
        super().__init__("input_expired")


class ResetTokenInvalid(DspError):
    """A password-reset token is unknown, expired or used (``reset_token_invalid``)."""

    def __init__(self) -> None:
        super().__init__("reset_token_invalid")


class PinError(DspError):
    """A PIN is refused (``pin_*``)."""


class AccessDenied(DspError):
    """A read or write of a record is refused.

    Codes: ``assistant_revoked``, ``not_designated``, ``document_not_found``,
    ``professional_unknown``, ``professional_blocked``, ``study_not_found``, ``image_not_found``.
    """


class UploadRejected(DspError):
    """An uploaded file is refused; nothing is stored (``file_*``, ``document_*``)."""


class ImagingError(DspError):
    """A DICOM file is refused or an image cannot be shown.

    Codes: ``dicom_invalid``, ``dicom_truncated``, ``dicom_no_pixels``, ``dicom_duplicate``,
    ``dicom_patient_mismatch``, ``image_not_renderable`` (and ``file_empty``, ``file_too_large``).
    """


class SearchRefused(DspError):
    """A directory search cannot be answered (``search_too_short``, ``search_no_match``, ``search_too_many``)."""


class HelpdeskError(DspError):
    """A helpdesk request is refused (codes in :data:`STAFF_ERROR_CODES`, shown by the console, never by the bot).

    Codes: ``agent_credentials_invalid``, ``agent_locked`` {retry_after_minutes}, ``agent_unknown``,
    ``agent_username_invalid``, ``agent_username_taken``, ``agent_name_invalid``, ``ticket_not_found``,
    ``ticket_already_claimed`` {agent}, ``ticket_not_claimed``, ``ticket_closed``, ``text_empty``,
    ``text_too_long`` {max_chars}, ``filter_invalid``.
    """


#: Every code the domain layer raises; each has a response `utter_err_<code>` in fr, de and en.
ERROR_CODES = frozenset({
    "matricule_format", "matricule_old_format", "matricule_date", "matricule_checksum",
    "activation_code_wrong", "activation_locked", "account_already_active",
    "password_too_short", "password_too_long", "password_common", "password_mismatch",
    "contact_invalid_email", "contact_invalid_phone",
    "otp_wrong", "otp_expired", "otp_exhausted", "otp_send_limit",
    "credentials_wrong", "account_not_active", "account_locked", "login_delay",
    "input_expired", "reset_token_invalid",
    "pin_format", "pin_weak", "pin_mismatch", "pin_wrong", "pin_locked", "pin_not_set", "not_logged_in",
    # records (issue 3)
    "terms_pending", "assistant_revoked", "not_designated", "document_not_found",
    "file_empty", "file_too_large", "file_type_refused", "file_damaged", "file_duplicate",
    "quota_exceeded", "upload_expired", "document_type_unknown",
    "search_too_short", "search_no_match", "search_too_many",
    "professional_unknown", "professional_blocked",
    # imaging
    "study_not_found", "image_not_found", "image_not_renderable",
    "dicom_invalid", "dicom_truncated", "dicom_no_pixels", "dicom_duplicate", "dicom_patient_mismatch",
})

#: Codes of the helpdesk staff side: answered by the console (bot/gateway/console.py), not by the assistant,
#: so they have no `utter_err_` response.
STAFF_ERROR_CODES = frozenset({
    "agent_credentials_invalid", "agent_locked", "agent_unknown", "agent_username_invalid", "agent_username_taken",
    "agent_name_invalid", "ticket_not_found", "ticket_already_claimed", "ticket_not_claimed", "ticket_closed",
    "text_empty", "text_too_long", "filter_invalid",
})
