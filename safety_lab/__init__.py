"""safety_lab: LoRA fine-tuning whose MLflow registry records each checkpoint's measured safety."""

__version__ = "0.1.0"
