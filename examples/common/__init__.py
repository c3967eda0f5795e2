"""What the three demos share, one concern per module.

* ``base``: the repository's paths, the runs and the pairs compared, the demos' error and
  messages, fairseq flags and commands as shown, a training process's environment, an
  evaluation tool's run, the setup checks;
* ``cli``: the options every demo takes, their parsing and checks;
* ``naming``: the run directories' and results files' names;
* ``training``: the resumable ``fairseq-train`` run, its records and its part of a per-seed record;
* ``fairseq_log``: reading fairseq-train's json log;
* ``equal_time``: R-Drop's figures at the baseline's training time;
* ``status``: ``--status``, where the runs stand;
* ``driver``: ``run_demo()``, the order of things, driven by a demo's ``DemoTask``;
* ``report``: the printed table, the curves' PNG, the results file;
* ``provenance``: what a results file records about how it was made;
* ``stats``: the significance tests and seed summaries;
* ``stages``: atomic outputs and resumable stages of the data preparations, fairseq's tools;
* ``debian_apt``: Debian's apt index files as a data source (fetch, read, parse deb822);
* ``corpus_snapshot``: a corpus built from them as files (TSV, digest, the shipped snapshot and
  its provenance) and the corpus builders' command line.
"""
