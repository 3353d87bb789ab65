"""Training tasks on the shared engine: classification (convattn.detection holds detection)."""
