"""The registered pyfunc, logged as code (MLflow models-from-code): loading it runs this file and the installed
safety_lab, never a pickle from the artifact store. The weights are the lineage's safetensors adapters."""

import mlflow

from safety_lab.registry import SafetyLabModel

mlflow.models.set_model(SafetyLabModel())
