"""Models-from-code entry of the served classifier: MLflow runs this file to build the model it loads; writes nothing.

Pass `serve.pyfunc.MODEL_CODE_PATH` as `python_model` to `mlflow.pyfunc.log_model` (with code_paths
serve/ and models/) so the logged model is this source file instead of a cloudpickled object.
"""

import mlflow

from serve.pyfunc import ImageClassifier

mlflow.models.set_model(ImageClassifier())
