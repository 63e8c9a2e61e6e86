"""The dispatcher's old home: :mod:`escalations.cases.dispatcher`."""

from escalations.cases.dispatcher import TOKEN_LIFETIME, Workflow
from escalations.cases.mapping import case_state

__all__ = ["TOKEN_LIFETIME", "Workflow", "case_state"]
