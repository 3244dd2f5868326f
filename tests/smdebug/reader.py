"""Runs INSIDE the smdebug virtual environment (never imported by the project or its tests):

    python reader.py TRIAL_PATH OUT_DIR

reads TRIAL_PATH with ``smdebug.trials.create_trial`` and writes OUT_DIR/trial.json (steps, workers,
names, and for every tensor, PREDICT step and worker the shape and dtype) and OUT_DIR/values.npz
(the values, keyed by the entry's position in trial.json's "values").
"""

import json
import sys

import numpy as np


def _seaweedfs_listing_workaround() -> None:
    # smdebug lists index files with Prefix="<trial>/index" and StartAfter="<trial>/index" (its
    # list_s3_objects sets StartAfter to the prefix). On AWS S3 a marker equal to the prefix skips
    # nothing; SeaweedFS returns an empty listing for it (the start-after/prefix bug of
    # seaweedfs/seaweedfs#11321). Pass no marker instead: the same request as far as S3 semantics go.
    import smdebug.core.index_reader as index_reader

    original = index_reader.list_s3_objects

    def list_s3_objects(bucket, prefix, start_after_key=None, delimiter=""):
        return original(bucket, prefix, "" if start_after_key in (None, prefix) else start_after_key, delimiter)

    index_reader.list_s3_objects = list_s3_objects


def main(path: str, out: str) -> None:
    if path.startswith("s3://"):
        _seaweedfs_listing_workaround()
    from smdebug import modes
    from smdebug.trials import create_trial

    trial = create_trial(path)
    report = {
        "steps": trial.steps(mode=modes.PREDICT),
        "global_steps": trial.steps(),
        "train_steps": trial.steps(mode=modes.TRAIN),
        "workers": sorted(trial.workers()),
        "num_workers": trial.num_workers,
        "names": trial.tensor_names(),
        "values": [],
    }
    arrays = {}
    for name in report["names"]:
        tensor = trial.tensor(name)
        for step in tensor.steps(mode=modes.PREDICT):
            for worker in sorted(tensor.workers(step, mode=modes.PREDICT)):
                value = tensor.value(step_num=step, mode=modes.PREDICT, worker=worker)
                key = f"v{len(report['values'])}"
                arrays[key] = value
                report["values"].append({"name": name, "step": step, "worker": worker, "key": key,
                                         "shape": list(value.shape), "dtype": str(value.dtype)})
    np.savez(f"{out}/values.npz", **arrays)
    with open(f"{out}/trial.json", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
