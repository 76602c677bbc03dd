"""A real Airflow for one stack: its own AIRFLOW_HOME, api-server, scheduler, dag-processor and
triggerer as host processes on loopback, and a REST client to drive it."""
