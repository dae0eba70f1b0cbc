"""The fuzz targets' own assertions still agree with the code: their seeds, twice, and seeded
random mutations through each ``TestOneInput`` (fuzz/smoke.py; atheris is not needed).

Real fuzzing (fuzz/run.py) is not part of the suite; without this a harness can go stale
unnoticed, as the frame target did when the relay began to verify checksums last."""

import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parent.parent / "fuzz" / "smoke.py"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_targets_pass_their_seeds_and_random_mutations(seed):
    proc = subprocess.run([sys.executable, str(SMOKE), "--mutations", "3000", "--seed", str(seed)],
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for target in ("frame", "nflog", "peer"):
        assert f"{target}: " in proc.stdout and "no failure" in proc.stdout
