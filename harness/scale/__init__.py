"""Planning training at scale: memory per GPU and GPU-hours before a run starts.

* :mod:`harness.scale.memory_plan` — memory per GPU (parameters, gradients, optimizer states,
  activations) for DDP, ZeRO-2, FSDP and ZeRO-3, with and without activation checkpointing, the
  minimum GPU count and the estimated GPU-hours of a run; :func:`~harness.scale.memory_plan.plan_lines`
  formats them for ``--dry-run``.
"""
