"""Training tasks (classification)."""
