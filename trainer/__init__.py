"""What runs in the pipeline's pods: ``python -m trainer validate|preprocess|train|deploy``."""
