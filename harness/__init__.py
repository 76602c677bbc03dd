"""Brings the local world up (cluster, S3, MLflow, Airflow) and replays scenarios through it.

Not built yet: issue 3 (the cluster), 4 (services and Airflow) and 5 (scenario replay).
"""
