"""One device and four fake CPU devices give the same training loss, update and predictions, and
the same inversion losses (BatchNorm statistics over the global batch)."""

import os
import subprocess
import sys


def test_one_and_four_devices_agree(idx_dir, tmp_path):
    script = os.path.join(os.path.dirname(__file__), "_multidevice.py")
    proc = subprocess.run([sys.executable, script, idx_dir, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SAME" in proc.stdout
