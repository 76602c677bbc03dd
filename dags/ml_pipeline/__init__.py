"""Support code of the ml_full_training_pipeline DAG (Airflow puts dags/ on sys.path)."""
