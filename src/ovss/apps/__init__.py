"""What users run: the `ovss` command, the HTTP API, the web demo and their shared model cache."""
