"""The continual loop, train state, device mesh, checkpointing, validation and logging."""
