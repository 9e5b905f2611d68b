"""Who may do what: the kinds of API client, and the record kinds an agency's scopes name.

Plain names without imports, so that the command line offers them as choices without loading the
service. app.clients checks a client's kind against CLIENT_KINDS; app.ingest.kinds defines how each of
RECORD_KINDS is read, and an agency may upload a kind only if its scopes name it. An operator client is
one person who reviews appeals (two of them for a colour change), over the API or `healthcode appeals`.
"""

from __future__ import annotations

from typing import Final

CLIENT_KINDS: Final = ("citizen-backend", "scanner", "agency", "operator")
RECORD_KINDS: Final = ("population", "vaccination", "test", "travel", "designation", "risk_area")
# Agency scopes beyond record kinds: `venue` registers place codes, `cdc` asks who visited a venue
# (and may turn the visitors into a designation batch).
VENUE_SCOPE: Final = "venue"
CDC_SCOPE: Final = "cdc"
AGENCY_SCOPES: Final = (*RECORD_KINDS, VENUE_SCOPE, CDC_SCOPE)
# Operator loads without --agency are recorded against this client id (no API client has it). The
# operator may correct or retract any agency's record; an agency only its own.
OPERATOR_CLIENT_ID: Final = 0
