"""MLflow for audit: where runs go (``runs``), a run log that outlives its server (``offline``) and its replay
(``sync``), the model registry (``registry``, with the alias decision in ``aliases``), model files behind MLflow
URIs (``models``), and runs listed, compared and reproduced (``listing``, ``reproduce``). Training and evaluation
never import this package: ``pipeline.stages`` hands them a run log."""
