"""The numeric tests again under plainer CPU kernels, so that a bound that holds only for this
host's kernels fails here, whatever the host. .ci/run runs this file after the README's test
command (it is not collected by default: ``pytest tests/rerun_kernels.py`` runs it).

torch and oneDNN pick their kernels from the CPU (AVX-512, AVX2, ...): a tolerance measured on
one host can fail on another. ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA force plainer ones on
any host, so the tests marked ``kernels`` (the numeric ones, cheap) run again in a child pytest
under the plainest (no AVX) and under AVX2.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NUMERIC_FILES = ['tests/test_functional.py', 'tests/test_encoder.py', 'tests/test_arch.py', 'tests/test_precision.py']
PLAINER_KERNELS = {
    'no AVX': ({'ATEN_CPU_CAPABILITY': 'default', 'ONEDNN_MAX_CPU_ISA': 'SSE41'}, 'DEFAULT'),
    'AVX2': ({'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2'}, 'AVX2'),
}


def _has(capability: str) -> bool:
    order = ['DEFAULT', 'AVX2', 'AVX512']
    native = torch.backends.cpu.get_cpu_capability()
    return native not in order or order.index(native) >= order.index(capability)


@pytest.mark.parametrize('variables, capability', PLAINER_KERNELS.values(), ids=PLAINER_KERNELS.keys())
def test_numeric_tests_pass_under_plainer_kernels(variables, capability, tmp_path):
    if not _has(capability):
        pytest.skip(f'this CPU has no {capability} kernels to force')
    env = {**os.environ, **variables, 'PYTHONDONTWRITEBYTECODE': '1',
           'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    probe = '; '.join(['import torch, pytest, sys', 'sys.exit(pytest.main(sys.argv[1:]))'])
    run = subprocess.run(
        [sys.executable, '-c', f'import torch; print("torch CPU kernels:", torch.backends.cpu.get_cpu_capability(), '
                               f'flush=True); {probe}',
         '-q', '-p', 'no:cacheprovider', '-m', 'kernels and not slow', '--basetemp', str(tmp_path / 'run'),
         *NUMERIC_FILES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    output = run.stdout + run.stderr
    assert run.stdout.startswith(f'torch CPU kernels: {capability}\n'), output[-3000:]
    assert run.returncode == 0, output[-6000:]
    assert ' passed' in run.stdout.splitlines()[-1], output[-3000:]
