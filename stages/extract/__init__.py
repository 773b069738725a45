"""Stage one: the SAM2 teacher (build, prompt, bidirectional tracking) and the extraction columns."""
