"""Real TensorRT for RTX builds, run in a child process (this test process's Polygraphy serves the
double as full TensorRT; Polygraphy picks one library per process)."""
