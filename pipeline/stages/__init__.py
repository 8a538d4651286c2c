"""The DVC stages that keep a record: training, evaluation and cross-validation as MLflow runs. Each hands the
tracking-free parts below (``training``, ``evaluation``) a run log from ``tracking`` and adds what only a record
needs (provenance, registration); the CLI and ``dvc.yaml`` call these functions."""
