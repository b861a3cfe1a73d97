"""medimg training: datasets, input pipelines, the training loop, evaluation, promotion and tuning."""
