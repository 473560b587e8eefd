"""Training: the task (objective, train_step), the solver, run directories and checkpoints, callbacks, distribution.
"""
