"""The pipeline as data: the stage table, the records stages pass on, and the walk that runs them.

- :mod:`~mergeline.pipeline.table`: every stage, its steps (library functions), the params they
  read, what they write and fan out over; the one declaration of the pipeline.
- :mod:`~mergeline.pipeline.records`: typed, frozen records passed between stages.
- :mod:`~mergeline.pipeline.walker`: runs the table up to a stage through an executor.
- :mod:`~mergeline.pipeline.dvc_yaml`: the ``dvc.yaml`` the table implies.
- :mod:`~mergeline.pipeline.lineage`, :mod:`~mergeline.pipeline.report`: what a finished walk yields.

Nothing here imports Prefect, MLflow or DVC: the product's executor lives in ``tasks/``.
"""
