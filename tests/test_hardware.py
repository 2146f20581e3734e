"""GPU visibility (CUDA_VISIBLE_DEVICES semantics) and the CPU core split per rank."""

import shutil
import subprocess

from tpworker.planning.hardware import cpu_threads_binding, select_visible, visible_gpus

UUIDS = ["GPU-aaa1", "GPU-abb2", "GPU-ccc3", "GPU-ddd4"]


def test_cuda_visible_devices_selects_and_orders_gpus():
    assert select_visible(None, UUIDS) == [0, 1, 2, 3]
    assert select_visible("", UUIDS) == []
    assert select_visible("2,0", UUIDS) == [2, 0]
    assert select_visible("GPU-c,1", UUIDS) == [2, 1]
    assert select_visible("GPU-a", UUIDS) == []  # ambiguous prefix: CUDA stops there
    assert select_visible("0,9,1", UUIDS) == [0]  # an invalid entry ends the list
    assert select_visible("1,1", UUIDS) == [1]


def test_the_visible_gpus_are_the_drivers():
    """What NVML shows agrees with nvidia-smi where a driver is installed; with none (CI, this
    project's CPU machines) NVML cannot load and no GPU is visible. CUDA_VISIBLE_DEVICES="" hides all."""
    gpus = visible_gpus(None)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        assert gpus == []
    else:
        query = [smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
        rows = [line.split(", ") for line in subprocess.check_output(query, text=True).strip().splitlines()]
        assert [(g.index, g.name) for g in gpus] == [(int(i), name) for i, name, _ in rows]
        assert [g.memory_bytes // 2**20 for g in gpus] == [int(mib) for _, _, mib in rows]
    assert visible_gpus("") == []


def test_each_cpu_rank_gets_its_own_cores():
    assert cpu_threads_binding(1, [0, 1]) is None
    assert cpu_threads_binding(2, [0, 1]) == "0|1"
    assert cpu_threads_binding(2, list(range(8))) == "0-3|4-7"
    assert cpu_threads_binding(4, [0, 1, 2, 3, 8, 9, 10, 11]) == "0-1|2-3|8-9|10-11"
    assert cpu_threads_binding(3, [0, 1]) == "nobind"
