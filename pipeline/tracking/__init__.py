"""MLflow for audit: runs and their provenance, the environment, a store that may be offline, the model registry,
and runs listed, compared and reproduced. Modules depend only on ``runs`` (and the standard libraries), never on
each other in a cycle."""
