"""The safety gate inside the MLflow tracking server: `mlflow server --app-name safety-gate`.

``app.create_app`` (the ``mlflow.app`` entry point) wraps MLflow's server app, and its basic-auth app when the
configuration asks for it, and puts the promotion gate of ``safety_lab.registry.moves`` in front of the
registry's write endpoints, whatever the client: the UI, REST or ``MlflowClient``.
"""
