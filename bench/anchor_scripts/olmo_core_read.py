"""Read a dolmino build with OLMo-core's own dataset; run with the OLMo-core venv's python.

    bench/.venvs/olmo-core/bin/python bench/anchor_scripts/olmo_core_read.py \
        --snippet SNIPPET.py --build DIR --seq-len 128 --work-dir DIR --out instances.npz

SNIPPET.py is README's OLMo-core example ("Output format"), run as written but for its `build = ...`
line, which becomes `--build`, its sequence_length and work_dir, which become the options', and its
`label_mask_paths` line, left out for a build without masks; the dataset it builds and prepares is read.
Writes, in OLMo-core's instance order (index 0, 1, ...): `input_ids` (uint32,
instances x seq_len), `label_mask` (bool, where the config names label masks), `labels` (int64, what
OLMo-core's `get_labels` makes of each instance, label mask and instance filter included) and `paths`;
prints one JSON object with the paths and the instance count.
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snippet", required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-label-masks", action="store_true", help="leave out the config's label_mask_paths line, "
                    "as the example says for a build without masks")
    args = ap.parse_args()

    import torch
    from olmo_core.data.utils import get_labels

    with open(args.snippet) as fh:
        code = fh.read()
    # the example's own dataset, at --seq-len in --work-dir (it was built and prepared as written, 4096 tokens in
    # /tmp/olmo-core-dataset, then built again with these)
    for pattern, value in ((r"^build = .*$", f"build = {args.build!r}"),
                           (r"sequence_length=\d+", f"sequence_length={args.seq_len}"),
                           (r"work_dir=\"[^\"]*\"", f"work_dir={args.work_dir!r}")):
        code, n = re.subn(pattern, lambda _, value=value: value, code, count=1, flags=re.M)
        if n != 1:
            raise SystemExit(f"the snippet has no {pattern!r}")
    if args.no_label_masks:
        code = "\n".join(line for line in code.splitlines() if "label_mask_paths=" not in line)
    namespace: dict = {}
    exec(compile(code, "README.md (OLMo-core example)", "exec"), namespace)  # builds and prepares its dataset
    dataset = namespace["dataset"]
    items = [dataset[i] for i in range(len(dataset))]
    out = {"input_ids": np.stack([item["input_ids"].numpy() for item in items]).astype(np.uint32),
           "paths": np.asarray([str(p) for p in dataset.paths])}
    if items and "label_mask" in items[0]:
        out["label_mask"] = np.stack([item["label_mask"].numpy() for item in items])
    batch = {key: torch.stack([torch.as_tensor(item[key]) for item in items])
             for key in ("input_ids", "label_mask", "instance_mask") if items and key in items[0]}
    out["labels"] = get_labels(batch).numpy().astype(np.int64) if items else np.zeros((0, args.seq_len), np.int64)
    np.savez(args.out, **out)
    print(json.dumps({"paths": [str(p) for p in dataset.paths], "instances": len(dataset)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
