"""The app: command line, the pipeline and its report, export to Hugging Face, annotation, experiments."""
