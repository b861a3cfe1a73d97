"""The Postgres-backed MLflow tracking server: docker compose files for a team server and a launcher (`python -m mlflow_server`) that needs no Docker."""
