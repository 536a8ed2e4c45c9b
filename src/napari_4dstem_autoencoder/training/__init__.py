"""Training: the event-yielding engine, its config, checkpoints and multi-process (DDP) glue.

Qt-free. Import the pieces from their modules (``training.engine.train``,
``training.config.TrainConfig``, ``training.checkpoints.load_checkpoint``, ...).
"""
