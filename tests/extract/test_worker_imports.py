"""The extraction worker runs where Ray is not installed (a single-GPU box): its imports must not need Ray."""

import subprocess
import sys

from conftest import ROOT


def test_worker_path_imports_no_ray_and_no_torchvision():
    code = (
        "import sys, stages.extract.shard_worker, stages.distill.stream, stages.extract.columns.registry, stages.extract.columns.teacher, "
        "stages.extract.columns.encodings, stages.extract.columns.image_teacher, stages.distill.trainer\n"
        "import torch; stages.extract.columns.image_teacher.load_dinov2('tiny', None, False, 0, torch.device('cpu'))\n"
        "bad = [m for m in ('ray', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
