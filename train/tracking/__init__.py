"""What medimg writes to MLflow besides metrics: tag and artifact names, provenance, experiment kind and run names, resilient logging; imports train.settings only."""
