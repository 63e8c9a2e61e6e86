"""The case workflow, pure: who may act, what happens next (see ARCHITECTURE, target layout)."""
