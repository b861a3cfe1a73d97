"""From a trained model to a served one: evaluate, promote, the eval-and-deploy pipeline, the model card; imports train.job, train.scoring, train.data, train.tracking."""
