"""Where a pipeline runs beyond this process: Ray for the data-parallel work of a step, Kubeflow
Pipelines and Airflow for the steps themselves. Each is an optional extra, imported only when used."""
