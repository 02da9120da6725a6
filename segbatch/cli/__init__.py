"""The `segbatch` command line: thin click commands over the library."""
