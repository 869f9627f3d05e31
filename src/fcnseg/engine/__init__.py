"""Training, evaluation and distributed helpers.

- :mod:`fcnseg.engine.train`: ``fcnseg train``, :func:`train` (:class:`TrainConfig` in :mod:`.config`)
- :mod:`.trainer` (one run's loop, validation, checkpoints), :mod:`.staged` (32s -> 16s -> 8s),
  :mod:`.model_setup` (the model a run starts from), :mod:`.resume` (exact resume),
  :mod:`.run_dir` (the run directory's files)
- :mod:`fcnseg.engine.evaluate`: ``fcnseg eval``, :func:`evaluate`, :func:`run_eval`
- :mod:`fcnseg.engine.distributed`: torchrun environment, ``is_main_process()``, sharded eval sampler
- helpers: :mod:`.sampling` (resumable, reproducible sampling), :mod:`.rng`, :mod:`.optim`,
  :mod:`.losses`, :mod:`.runtime` (device, AMP, versions), :mod:`.signals`, :mod:`.workers`
  (default DataLoader workers), :mod:`.loader_errors` (a worker's error as its own one line)

Import from the submodules (``from fcnseg.engine.train import train``): re-exporting
``train`` here would be shadowed by the submodule of the same name.
"""
