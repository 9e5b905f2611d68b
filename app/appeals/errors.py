"""Appeals' own errors: the HTTP edge (app.http.problems) and the command line each answer them their way."""

from __future__ import annotations


class AppealError(Exception):
    """A refusal by the appeals domain; `code` is stable, for programs to branch on."""

    code = "appeal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AppealNotFound(AppealError):
    code = "not_found"


class SubjectUnknown(AppealError):
    """An appeal for a person of whom no record is held: there is no code to appeal."""

    code = "subject_unknown"


class InvalidAppealField(AppealError):
    def __init__(self, field: str, code: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.code = code


class IdentityNumberInText(InvalidAppealField):
    """Free text that holds something shaped like an identity number; it would be stored as given."""

    def __init__(self, field: str, id_type: str, offset: int) -> None:
        super().__init__(
            field,
            "identity_number_in_text",
            f"{field} holds something shaped like a {id_type} document number at character {offset}; free "
            "text is stored as given, so it must not hold identity numbers (the person is named by id_type "
            "and id_number alone)",
        )
        self.id_type = id_type
        self.offset = offset


class WrongState(AppealError):
    """The decision does not fit the appeal's state (approving what was never proposed, deciding twice)."""

    code = "wrong_state"

    def __init__(self, state: str, detail: str) -> None:
        super().__init__(detail)
        self.state = state


class StaleProposal(WrongState):
    """An approval names a proposal that is no longer the pending one."""

    code = "stale_proposal"


class SecondOperatorRequired(AppealError):
    """The proposer of a colour change tried to approve it: a change needs two different operators."""

    code = "second_operator_required"
