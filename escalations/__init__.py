"""Escalations: resolving professional differences over email."""
