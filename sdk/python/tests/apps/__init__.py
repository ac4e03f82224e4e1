"""Worker modules the tests run as child processes (``python -m muster worker``)."""
