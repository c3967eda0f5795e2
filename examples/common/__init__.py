"""What the three demos share, one concern per module (each module's docstring says which): the
command line, the run directories' names, the resumable training, ``--status``, the driver, the
report, provenance, statistics, the data preparations' stages and the Debian corpora."""
