"""The build, as stages that read top to bottom (docs/DESIGN.md "Build at scale").

    inputs   list every source's files, cut them into units (whole files, or byte ranges of
             large plain .jsonl and Posts.xml) and group units into tasks of a target size in bytes
    tag      once per pool: read every unit, quarantine bad lines, and write its attribute
             files (id, line, bytes, content hash; each filter's scores or verdicts; MinHash
             clusters) under the attributes root                       `dolmino tag`
    select   from attributes only: decide filters, dedup, and choose which documents the
             mix may take (a hash-order prefix of each pool, or all of it)
    write    read and tokenize only those documents, cut each source exactly at its token
             target, and write the memmaps from the executors         `dolmino mix`
    report   the driver checks every part the executors reported, then writes report.json
             last: a build is complete when report.json exists

Nothing here assumes a filesystem shared by the driver and the executors: inputs,
attributes and outputs may all be s3://, and every file an executor writes is reported to
the driver and checked there.
"""

from dolmino.build.worker_env import check as _check_worker

# Every executor task imports this package before it runs: a worker whose code or libraries are not the
# driver's stops here, naming the difference, instead of building another mix (dolmino.build.worker_env).
_check_worker()
