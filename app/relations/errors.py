"""The relations domain's own refusals; the HTTP edge (app.http.problems) answers each as a problem."""

from __future__ import annotations


class RelationError(Exception):
    """A refusal by the relations domain; `code` is stable, for programs to branch on."""

    code = "relation_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRelationField(RelationError):
    """A field of a registration is wrong, or the two people do not fit the relation asked for."""

    def __init__(self, field: str, code: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.code = code


class NoRelation(RelationError):
    """A look-up on behalf of someone with whom no live relation is registered."""

    code = "no_relation"


class RelationNotFound(RelationError):
    """No relation with this id has the asking person as a party (whether it exists is not said)."""

    code = "not_found"


class RelationExists(RelationError):
    """The pair already has a live relation of the other kind; end it first."""

    code = "relation_exists"

    def __init__(self, detail: str, relation_id: int) -> None:
        super().__init__(detail)
        self.relation_id = relation_id
