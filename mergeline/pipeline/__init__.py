"""The pipeline as data: the stage table, the records stages pass on, and the walk that runs them.

- :mod:`~mergeline.pipeline.table`: every stage, its steps (library functions), the params they
  read, what they write and fan out over; the one declaration of the pipeline.
- :mod:`~mergeline.pipeline.records`: typed, frozen records passed between stages.
- :mod:`~mergeline.pipeline.walker`: runs the table up to a stage through an executor.
- :mod:`~mergeline.pipeline.dvc_yaml`: the ``dvc.yaml`` the table implies.
- :mod:`~mergeline.pipeline.sweeps`, :mod:`~mergeline.pipeline.edits`: what params sweep (a method's grid,
  negation, analogy), the variants the merge plan makes of negation and analogy, and the rules that
  choose the point of each sweep scored on test.
- :mod:`~mergeline.pipeline.lineage`, :mod:`~mergeline.pipeline.report`: what a finished walk yields.
- :mod:`~mergeline.pipeline.sweep_report`, :mod:`~mergeline.pipeline.claims`: tables over several runs
  (seeds, grid points) and paired comparisons on the same test examples (``mergeline report``).

Nothing here imports Prefect, MLflow or DVC: the product's executor lives in ``tasks/``.
"""
