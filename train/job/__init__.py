"""The training job: stages, the trainer that composes them, callbacks, losses and the hardware set-up; imports train.data, train.scoring, train.tracking, models and serve."""
