"""Nothing from inside a dependency reaches the user: memory-mapped and read-only arrays never make torch
warn that "the given NumPy array is not writable". torch warns once per process, so each check runs in a
fresh interpreter with every warning turned into an error."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

SCRIPT = textwrap.dedent('''
    import sys
    import warnings
    from pathlib import Path

    warnings.simplefilter("error")
    import numpy as np

    import fsd
    from fsd.segmenters.labelmap import LabelMapSegmenter
    from fsd.sources import ArraySource, SequenceSource, open_source
    from tests.conftest import ColorSegmenter

    root = Path(sys.argv[1])
    rgb, labels = ColorSegmenter(32), LabelMapSegmenter(4)
    read_only = np.load(root / "nchw32.npy")
    read_only.flags.writeable = False
    cases = [
        (root / "nchw32.npz", rgb),  # memory-mapped, already the segmenter's size: no resize
        (root / "nchw40.npz", rgb),  # memory-mapped, resized
        (root / "nhwc32.npy", rgb),
        (root / "gray.npz", rgb),
        (ArraySource(np.load(root / "float.npy", mmap_mode="r"), value_range=(0, 1)), rgb),
        (open_source(root / "float.npy", value_range=(0, 1)), rgb),
        (read_only, rgb),
        (SequenceSource([image for image in read_only.transpose(0, 2, 3, 1)]), rgb),
        (root / "labels.npz", labels),
    ]
    for source, segmenter in cases:
        opened = open_source(source)
        for index in range(len(opened)):
            assert opened.read(index, segmenter.preprocessing).flags.writeable, source
        for workers in (0, 2):
            stats = fsd.compute_stats(opened, segmenter=segmenter, num_workers=workers, batch_size=2, progress=False)
            assert stats.n == len(opened)
    from fsd.distributed import pack_sums

    sums, outer = np.zeros(4, np.int64), np.zeros((4, 4), np.int64)
    sums.flags.writeable = outer.flags.writeable = False  # as sums of a read-only Stats would be
    assert pack_sums(1, sums, outer).shape == (21,)
    print("read", len(cases), "sources")
''')


def test_read_only_and_memory_mapped_arrays_print_nothing(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "nchw32.npz", rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8))
    np.save(tmp_path / "nchw32.npy", rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8))
    np.savez(tmp_path / "nchw40.npz", rng.integers(0, 256, (5, 3, 40, 48), dtype=np.uint8))
    np.save(tmp_path / "nhwc32.npy", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    np.savez(tmp_path / "gray.npz", rng.integers(0, 256, (5, 32, 32, 1), dtype=np.uint8))
    np.save(tmp_path / "float.npy", rng.random((5, 3, 32, 32), dtype=np.float32))
    np.savez(tmp_path / "labels.npz", rng.integers(0, 4, (5, 32, 32, 1), dtype=np.uint8))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-W", "error", "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "read 9 sources\n"
    assert proc.stderr == ""
