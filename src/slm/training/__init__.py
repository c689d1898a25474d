"""Training: the loop and everything it needs that is not the model itself.

- `loop`: `train(TrainRequest)`, the whole of `slm train`: steps with gradient
  accumulation, evaluation, checkpoints, resume, interruption.
- `setup`: how a run starts: settings, data, model, for a new run, a fine-tune, a resume.
- `distributed`: torchrun: the process group, DDP, what the ranks agree on each step.
- `schedule`: the budget (steps, tokens, time) and the learning rate at each step (warmup,
  warmup-stable-decay or cosine), as pure functions.
- `optimizer`: AdamW (or Muon) and its parameter groups, the loss, `torch.compile`.
- `muon`: `--optimizer muon`: orthogonalized updates for the hidden matrices.
- `run_folder`: choosing the run folder, recording its data, resume checks, the folder's
  lock (`RunGuard`).
- `memory`: settings that cannot fit (context, estimated peak memory) refused up front.
- `finetune`: `--init-from`: the source model, fine-tune defaults, growing the vocabulary.
- `metrics`: `metrics.jsonl` and `loss.png`.
- `progress`: what the loop reports while it runs (`TrainProgress`).
- `stop`: Ctrl-C and SIGTERM as a request to stop after the step in flight.

Named `training` rather than `train` so that the name `slm.train` stays free for a function.
"""
