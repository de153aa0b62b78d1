"""What TensorBoard's own reader finds in a clsnorm event file, for tests/tensorboard.rs.

    bench/.venv/bin/pip install tensorboard
    bench/.venv/bin/python bench/tensorboard_check.py tests/fixtures/tensorboard

Reads the folder with tensorboard's EventAccumulator (the loader `tensorboard --logdir`
uses) and writes read_by_tensorboard.json beside the event file: every scalar tag with its
(step, value) pairs. The Rust test reads the same file with clsnorm's reader and must find the
same; its other tests check clsnorm's writer against clsnorm's reader on fresh runs.
"""

import json
import pathlib
import sys

import tensorboard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

folder = pathlib.Path(sys.argv[1])
ea = EventAccumulator(str(folder))
ea.Reload()
scalars = {
    tag: [[e.step, e.value] for e in ea.Scalars(tag)] for tag in sorted(ea.Tags()["scalars"])
}
out = {"tensorboard": tensorboard.__version__, "scalars": scalars}
(folder / "read_by_tensorboard.json").write_text(json.dumps(out, indent=1) + "\n")
print(f"{len(scalars)} tags -> {folder / 'read_by_tensorboard.json'}")
